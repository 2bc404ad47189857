# Developer shortcuts. `make fuzz` runs the differential fuzzer long (tests/fuzz/gen.py):
# FUZZ_EXAMPLES programs, each on every target against the reference; a mismatch is shrunk
# and saved to tests/fuzz/corpus/ (replayed by the normal suite). FUZZ_KNOWN=1 also draws
# the constructs of open corpus entries.
PYTHON ?= python
FUZZ_EXAMPLES ?= 20000
FUZZ_KNOWN ?= 0
FUZZ_STATS ?= .fuzz-stats
FUZZ_LAST ?= .fuzz-last.json

.PHONY: test lint fuzz

test:
	$(PYTHON) -m pytest

lint:
	ruff check .

fuzz:
	TDSL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) TDSL_FUZZ_KNOWN=$(FUZZ_KNOWN) \
	TDSL_FUZZ_STATS=$(FUZZ_STATS) TDSL_FUZZ_LAST=$(FUZZ_LAST) $(PYTHON) -m pytest -n 0 -x \
	    tests/fuzz/test_differential.py::test_random_kernels_match_the_reference \
	    --hypothesis-show-statistics || { echo "if the process crashed, the kernel it ran is" \
	    "in $(FUZZ_LAST): replay it with python tests/fuzz/gen.py $(FUZZ_LAST)"; exit 1; }
	@echo "programs run: $$(wc -l < $(FUZZ_STATS)) (failing: $$(grep -c FAIL $(FUZZ_STATS)))"
