"""Refit the minimax polynomials of tdsl's vector math and rewrite dsl/vector_math_coeffs.py.

Needs mpmath (not a dependency of tdsl). Slow (several minutes: the f64 erf pieces). Usage:
    python tools/fit_vector_math.py fits.txt        # fit; writes NAME = (coefficients) lines
    python tools/fit_vector_math.py --write fits.txt  # write dsl/vector_math_coeffs.py
"""
# ruff: noqa
import sys
from fractions import Fraction
import mpmath as mp
import numpy as np
mp.mp.dps = 60

def fit(g, basis_t, a, b, deg, npts=300, iters=60, rel=True, fixed=None):
    """Fit g(x) ~ sum_k c_k * t(x)^k over x in [a,b] (Chebyshev nodes), relative error."""
    xs = [ (a+b)/2 + (b-a)/2*mp.cos(mp.pi*(i+mp.mpf(0.5))/npts) for i in range(npts)]
    ts = [basis_t(x) for x in xs]
    ys = [g(x) for x in xs]
    ws = [mp.mpf(1)]*npts
    n = deg+1
    for it in range(iters):
        A = mp.matrix(npts, n); B = mp.matrix(npts, 1)
        for i in range(npts):
            s = mp.sqrt(ws[i]) / (abs(ys[i]) if rel else 1)
            for k in range(n):
                A[i,k] = ts[i]**k * s
            B[i] = ys[i]*s
        c = mp.qr_solve(A, B)[0]
        errs = []
        for i in range(npts):
            p = sum(c[k]*ts[i]**k for k in range(n))
            e = (p-ys[i])/(ys[i] if rel else 1)
            errs.append(abs(e))
        tot = sum(w*e for w, e in zip(ws, errs))
        ws = [w*e/tot for w, e in zip(ws, errs)]
    return [c[k] for k in range(n)], max(errs)

def fitw(g, basis_t, a, b, deg, weight, npts=200, iters=40):
    """Minimize max |p - g| * weight(x) (weight given as mp function)."""
    xs = [ (a+b)/2 + (b-a)/2*mp.cos(mp.pi*(i+mp.mpf(0.5))/npts) for i in range(npts)]
    ts = [basis_t(x) for x in xs]
    ys = [g(x) for x in xs]
    wf = [weight(x) for x in xs]
    ws = [mp.mpf(1)]*npts
    n = deg+1
    for it in range(iters):
        A = mp.matrix(npts, n); B = mp.matrix(npts, 1)
        for i in range(npts):
            s = mp.sqrt(ws[i]) * wf[i]
            for k in range(n):
                A[i,k] = ts[i]**k * s
            B[i] = ys[i]*s
        c = mp.qr_solve(A, B)[0]
        errs = []
        for i in range(npts):
            p = sum(c[k]*ts[i]**k for k in range(n))
            errs.append(abs((p-ys[i])*wf[i]))
        tot = sum(w*e for w, e in zip(ws, errs))
        ws = [w*e/tot for w, e in zip(ws, errs)]
    return [c[k] for k in range(n)], max(errs)

def run_fits(out):
    mp.mp.dps = 40
    R = lambda x: mp.erfc(x)*mp.exp(x*x)
    W = lambda x: mp.exp(-x*x)/mp.erf(x)
    out = {}
    def show(name, cs, err):
        out[name] = [float(c) for c in cs]
        print(f"# {name}: max weighted error {mp.nstr(err, 3)}", flush=True, file=out)
        print(f"{name} = {tuple(float(c) for c in cs)!r}", flush=True, file=out)
    c, e = fit(lambda x: (mp.tanh(x)/x - 1)/x**2, lambda x: x*x, mp.mpf('1e-30'), mp.mpf(0.625), 5, npts=150, iters=40); show("TANH_F32", c, e)
    c, e = fit(lambda x: (mp.tanh(x)/x - 1)/x**2, lambda x: x*x, mp.mpf('1e-30'), mp.mpf(0.625), 11, npts=150, iters=40); show("TANH_F64", c, e)
    c, e = fit(lambda x: mp.erf(x)/x - 1, lambda x: x*x, mp.mpf('1e-30'), mp.mpf(1), 6, npts=150, iters=40, rel=False); show("ERF_SMALL_F32", c, e)
    c, e = fit(lambda x: mp.erf(x)/x - 1, lambda x: x*x, mp.mpf('1e-30'), mp.mpf(1), 11, npts=150, iters=40, rel=False); show("ERF_SMALL_F64", c, e)
    a, b = mp.mpf(1), mp.mpf('3.92')
    c, e = fitw(R, lambda x: x-(a+b)/2, a, b, 8, W, npts=150, iters=40); show("ERFC_F32", c, e)
    pieces = [mp.mpf(v) for v in ("1.0", "1.75", "2.75", "4.0", "5.92")]
    for i, (a, b) in enumerate(zip(pieces, pieces[1:])):
        c, e = fitw(R, lambda x: x-(a+b)/2, a, b, 13, W, npts=150, iters=40); show(f"ERFC_F64_{i}", c, e)

def write_coeffs(fits_path, target):
    mp.mp.dps = 60
    fits = {}
    for line in open(fits_path):
        if line.startswith("#") or "=" not in line:
            continue
        name, val = line.split("=", 1)
        fits[name.strip()] = eval(val)
    def chunks(v, bits_list):
        out=[]; rem=v
        for bits in bits_list:
            e = mp.floor(mp.log(abs(rem), 2))
            q = mp.nint(rem * mp.mpf(2)**(bits-1-e)) / mp.mpf(2)**(bits-1-e)
            out.append(float(q)); rem -= q
        return tuple(out)
    def fmt(t):
        body = ",\n    ".join(repr(float(v)) for v in t)
        return f"(\n    {body},\n)"
    ln2 = mp.log(2)
    lines = ['"""Constants of `tdsl.vector_math`: exact splits of ln 2 and pi/2, Taylor series, and',
     'near-minimax polynomials fitted with mpmath (Lawson\'s iteratively reweighted least squares on',
     'Chebyshev nodes at 60 digits; the fitted maximum error is noted for each). Generated; see',
     '`docs/vector_math.md` for how and for the measured accuracy."""', '',
     'from __future__ import annotations', '']
    def add(name, value, comment=None):
        if comment:
            lines.append(f"# {comment}")
        if isinstance(value, tuple) and len(value) > 3:
            lines.append(f"{name} = {fmt(value)}")
        else:
            lines.append(f"{name} = {value!r}")
    add("LOG2E", float(1/ln2))
    add("TWO_OVER_PI", float(2/mp.pi))
    add("LN2_F32", tuple(float(mp.mpf(x)) for x in chunks(ln2, [16, 24])), "ln 2 = hi + lo; hi has 16 bits (k * hi exact for abs(k) < 2^8)")
    add("LN2_F64", chunks(ln2, [42, 53]), "ln 2 = hi + lo; hi has 42 bits (k * hi exact for abs(k) < 2^11)")
    add("LN2_DD", chunks(ln2, [42, 53, 53]), "ln 2 in three parts (double-double log for f64 pow)")
    add("PIO2_CW", chunks(mp.pi/2, [33, 33, 53]), "pi/2 = p1 + p2 + p3; p1, p2 have 33 bits (k * p exact for k < 2^20)")
    add("PIO2_DD", chunks(mp.pi/2, [53, 53]), "pi/2 as a double-double")
    add("TWO_THIRDS_DD", chunks(mp.mpf(2)/3, [53, 53]), "2/3 as a double-double")
    add("EXP_TAYLOR_F32", tuple(float(Fraction(1, mp.factorial(n).__int__())) for n in range(8)), "1/n!, n <= 7: abs(r) <= ln2/2 leaves 5e-9 relative")
    add("EXP_TAYLOR_F64", tuple(float(Fraction(1, int(mp.factorial(n)))) for n in range(14)), "1/n!, n <= 13: abs(r) <= ln2/2 leaves 4e-18 relative")
    add("LOG_ATANH_F32", tuple(2.0/(2*n+1) for n in range(1, 6)), "2 atanh(s) = 2s + s z (2/3 + 2/5 z + ...), z = s^2 <= 0.0295")
    add("LOG_ATANH_F64", tuple(2.0/(2*n+1) for n in range(1, 11)))
    add("SIN_TAYLOR", tuple(float(Fraction((-1)**n, int(mp.factorial(2*n+1)))) for n in range(1, 10)), "coefficients of r^3, r^5, ..., r^19 (abs(r) <= pi/4: 1e-22 left)")
    add("COS_TAYLOR", tuple(float(Fraction((-1)**n, int(mp.factorial(2*n)))) for n in range(2, 10)), "coefficients of r^4, r^6, ..., r^18 (abs(r) <= pi/4: 3e-21 left)")
    errs = {}
    for line in open(fits_path):
        if line.startswith("# "):
            errs[line.split(":")[0][2:]] = line.split("error")[1].strip()
    add("TANH_F32", fits["TANH_F32"], f"(tanh(x)/x - 1)/x^2 in x^2 on [0, 0.625]; relative error {errs['TANH_F32']}")
    add("TANH_F64", fits["TANH_F64"], f"the same, relative error {errs['TANH_F64']}")
    add("ERF_SMALL_F32", fits["ERF_SMALL_F32"], f"erf(x)/x - 1 in x^2 on [0, 1]; absolute error {errs['ERF_SMALL_F32']}")
    add("ERF_SMALL_F64", fits["ERF_SMALL_F64"], f"the same, absolute error {errs['ERF_SMALL_F64']}")
    add("ERF_ONE_F32", 3.92, "erf(x) rounds to 1 beyond this")
    add("ERF_ONE_F64", 5.92)
    add("ERFC_F32_CENTER", (1 + 3.92) / 2)
    add("ERFC_F32", fits["ERFC_F32"], f"R(x) = erfc(x) exp(x^2) in x - 2.46 on [1, 3.92]; error of erf {errs['ERFC_F32']}")
    bounds = [1.0, 1.75, 2.75, 4.0, 5.92]
    pieces = []
    for i in range(4):
        a, b = bounds[i], bounds[i+1]
        pieces.append((a, float((mp.mpf(a)+mp.mpf(b))/2), fits.get(f"ERFC_F64_{i}", fits["ERFC_F64_0"])))
        lines.append(f"# ERFC_F64 piece {i}: [{a}, {b}], error of erf {errs.get('ERFC_F64_' + str(i), '?')}")
    lines.append("ERFC_F64_PIECES = (")
    for a, c, cs in pieces:
        body = ", ".join(repr(float(v)) for v in cs)
        lines.append(f"    ({a!r}, {c!r}, ({body})),")
    lines.append(")")
    n = int(mp.floor(2/mp.pi * mp.mpf(2)**1280)) if False else None
    mp.mp.dps = 500
    n = int(mp.floor(2/mp.pi * mp.mpf(2)**1280))
    h = f"{n:x}"
    lines.append("# 2/pi = TWO_OVER_PI_BITS / 2^1280 (hexadecimal digits)")
    lines.append("TWO_OVER_PI_BITS = int(")
    for i in range(0, len(h), 80):
        lines.append(f'    "{h[i:i+80]}"')
    lines.append("    , 16)")
    lines.append("")
    open(target, "w").write("\n".join(lines))

if __name__ == "__main__":
    if sys.argv[1] == "--write":
        from pathlib import Path
        write_coeffs(sys.argv[2], str(Path(__file__).resolve().parent.parent / "dsl" / "vector_math_coeffs.py"))
    else:
        with open(sys.argv[1], "w") as out:
            run_fits(out)
