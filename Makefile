# Developer shortcuts. `make fuzz` runs the differential fuzzer long (tests/fuzz/gen.py):
# FUZZ_EXAMPLES programs, each on every target of FUZZ_TARGETS against the reference (the
# GPU mapping runs on the emulator; fake-cuda runs the cuda target's host code and driver
# calls with the emulator as the GPU; add cuda where a GPU is); a mismatch is shrunk
# and saved to tests/fuzz/corpus/ (replayed by the normal suite). FUZZ_KNOWN=1 also draws
# the constructs of open corpus entries.
PYTHON ?= python
FUZZ_EXAMPLES ?= 20000
FUZZ_KNOWN ?= 0
FUZZ_TARGETS ?= cpu,emulator
FUZZ_STATS ?= .fuzz-stats
FUZZ_LAST ?= .fuzz-last.json
FUZZ_MINUTES ?= 60

.PHONY: test lint fuzz fuzz-long

test:
	$(PYTHON) -m pytest

lint:
	ruff check .

fuzz:
	TDSL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) TDSL_FUZZ_KNOWN=$(FUZZ_KNOWN) TDSL_FUZZ_TARGETS=$(FUZZ_TARGETS) \
	TDSL_FUZZ_STATS=$(FUZZ_STATS) TDSL_FUZZ_LAST=$(FUZZ_LAST) $(PYTHON) -m pytest -n 0 -x \
	    tests/fuzz/test_differential.py::test_random_kernels_match_the_reference \
	    --hypothesis-show-statistics || { echo "if the process crashed, the kernel it ran is" \
	    "in $(FUZZ_LAST): replay it with python tests/fuzz/gen.py $(FUZZ_LAST)"; exit 1; }
	@echo "programs run: $$(wc -l < $(FUZZ_STATS)) (failing: $$(grep -c FAIL $(FUZZ_STATS)))"

# `make fuzz` again and again (a fresh random seed each time) for FUZZ_MINUTES minutes, going on
# after a finding (each is shrunk and saved to the corpus); the counts add up in FUZZ_STATS.
fuzz-long:
	@end=$$(( $$(date +%s) + 60 * $(FUZZ_MINUTES) )); runs=0; \
	while [ $$(date +%s) -lt $$end ]; do runs=$$((runs + 1)); \
	    $(MAKE) --no-print-directory fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) > .fuzz-run-$$runs.log 2>&1 \
	        || echo "run $$runs found something: see .fuzz-run-$$runs.log"; \
	done; echo "$$runs runs; programs run: $$(wc -l < $(FUZZ_STATS)) (failing: $$(grep -c FAIL $(FUZZ_STATS)))"
