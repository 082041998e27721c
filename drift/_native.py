"""Numeric drift counting compiled to machine code (LLVM, through llvmlite), when it can be.

`drift.counts.count_numeric` sorts each chunk of values and searches the bin boundaries
into them. That sort was a quarter of a scoring worker's CPU: 21 columns a batch, 5-6 ms
for each 131,072 values (numpy's sort runs at ~24M values/s on this project's machines).
This kernel searches each value into the bins instead, with no sort:

- the number of PSI edges below the value is its PSI bin (bins are right-closed), and the
  number of sketch grid points below it, j, is its sketch cell 2j, or 2j+1 when it equals
  grid point j: the very cells `count_numeric` defines;
- a search is a branch-free binary search over the grid padded with +inf to a power of two
  (log2 steps, each one load and one compare), for `LANES` values at once as vectors: a
  compare is a vector compare, a load a gather. Scalar code was no faster than the sort:
  LLVM turns its compare-and-add into a branch the data mispredict half the time;
- NaN compares false everywhere, and is then counted in the missing bin only.

~1.6 ms per 131,072 normal values (2% NaN) in a 2,049-point grid, against 5.5-6.5 ms for
the sort. The counts are the same integers (tests/drift/test_drift_counts.py compares both
on random, tied, infinite and missing values).

It is compiled once per process, ~40 ms, for the host CPU, and kept in memory: by the fork
server before it forks the scoring workers (`drift.methods.warm_up`), so that they all
start with it; in any other process only for a call, or a chunk of calls, large enough to
repay those 40 ms (`count_numeric`, `expect_to_count`: a Dask worker's first chunk).
Where llvmlite cannot import or compiling fails, the sort counts, with the same results.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

LANES = 16  # values searched at once: 16 measured 1.6 ms, 8 2.4 ms, 1 (scalar) 9.4 ms

_lock = threading.Lock()
_kernel = None  # the compiled function; False when it cannot be built in this process
_engine = None  # LLVM's execution engine, which owns the compiled code: kept alive here


def ready() -> bool:
    """Whether the kernel is compiled in this process already."""
    return bool(_kernel)


def build() -> bool:
    """Compile the kernel unless done (or failed) already; whether it is there now."""
    global _kernel, _engine
    if _kernel is None:
        with _lock:
            if _kernel is None:
                try:
                    _engine, _kernel = _compile()
                except Exception:  # llvmlite missing or unusable: the sort counts instead
                    _kernel = False
    return bool(_kernel)


def count(values: np.ndarray, edges: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSI bin counts (then the missing bin) and sketch cell counts of float64 `values`,
    exactly as `drift.counts.count_numeric` defines them. `build()` must have succeeded."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    padded_grid, grid_step = _padded(grid)
    padded_edges, edge_step = _padded(edges)
    bins = np.zeros(edges.size + 2, dtype=np.int64)
    cells = np.zeros(2 * grid.size + 2, dtype=np.int64)  # the last: where NaN lanes go
    fixed = (
        padded_grid.ctypes.data,
        grid.size,
        grid_step,
        padded_edges.ctypes.data,
        edges.size,
        edge_step,
        cells.ctypes.data,
        bins.ctypes.data,
    )
    whole = values.size - values.size % LANES
    if whole:
        _kernel(values.ctypes.data, whole, *fixed)
    if whole < values.size:  # the tail, filled up with NaN, which is then uncounted
        tail = np.full(LANES, np.nan)
        tail[: values.size - whole] = values[whole:]
        _kernel(tail.ctypes.data, LANES, *fixed)
        bins[-1] -= LANES - (values.size - whole)
    return bins, cells[:-1]


def _padded(points: np.ndarray) -> tuple[np.ndarray, int]:
    """`points` followed by +inf up to a power of two longer than them, and the search's
    first step (half that length): every probe of the search is then inside the array,
    and +inf is never below a value."""
    size = 1 << int(points.size).bit_length()
    padded = np.full(size, np.inf)
    padded[: points.size] = points
    return padded, size >> 1


def _compile():
    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(_ir(LANES))
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    builder = llvm.create_pass_manager_builder()
    builder.opt_level = 3
    passes = llvm.create_module_pass_manager()
    builder.populate(passes)
    passes.run(module)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    address = engine.get_function_address("count_numeric")
    p, n = ctypes.c_void_p, ctypes.c_int64
    return engine, ctypes.CFUNCTYPE(None, p, n, p, n, n, p, n, n, p, p)(address)


def _ir(lanes: int) -> str:
    """LLVM IR of `count_numeric(values, n, grid, k, grid_step, edges, e, edge_step, cells,
    bins)`, n a multiple of `lanes`; grid and edges padded (`_padded`)."""
    vec, ints, bools = f"<{lanes} x double>", f"<{lanes} x i64>", f"<{lanes} x i1>"
    ptrs = f"<{lanes} x double*>"
    gather = f"@llvm.masked.gather.v{lanes}f64.v{lanes}p0f64"
    every = "<" + ", ".join(["i1 true"] * lanes) + ">"
    minus_one = "<" + ", ".join(["i64 -1"] * lanes) + ">"
    out = [
        f"declare {vec} {gather}({ptrs}, i32, {bools}, {vec})",
        f"""
define void @count_numeric(double* noalias nocapture readonly %values, i64 %n,
    double* noalias nocapture readonly %grid, i64 %k, i64 %grid_step,
    double* noalias nocapture readonly %edges, i64 %e, i64 %edge_step,
    i64* noalias nocapture %cells, i64* noalias nocapture %bins) {{
entry:
  %any = icmp sgt i64 %n, 0
  %missing = add i64 %e, 1
  %double_k = shl i64 %k, 1
  %nan_cell = add i64 %double_k, 1
  br i1 %any, label %load, label %exit
load:
  %i = phi i64 [0, %entry], [%i_next, %tally]
  %at = getelementptr inbounds double, double* %values, i64 %i
  %at_vec = bitcast double* %at to {vec}*
  %x = load {vec}, {vec}* %at_vec, align 8
  br label %grid_search""",
    ]
    # Per lane: pos = the number of points below x, by steps of step, step/2, ..., 1.
    for name, points, first, after, then in (
        ("grid", "%grid", "%grid_step", "load", "edge_search"),
        ("edge", "%edges", "%edge_step", "grid_search", "tally"),
    ):
        out.append(f"""{name}_search:
  %{name}_pos = phi {ints} [zeroinitializer, %{after}], [%{name}_pos_next, %{name}_probe]
  %{name}_s = phi i64 [{first}, %{after}], [%{name}_s_next, %{name}_probe]
  %{name}_done = icmp eq i64 %{name}_s, 0
  br i1 %{name}_done, label %{then}, label %{name}_probe
{name}_probe:
  %{name}_s1 = insertelement {ints} undef, i64 %{name}_s, i32 0
  %{name}_sv = shufflevector {ints} %{name}_s1, {ints} undef, <{lanes} x i32> zeroinitializer
  %{name}_end = add {ints} %{name}_pos, %{name}_sv
  %{name}_last = add {ints} %{name}_end, {minus_one}
  %{name}_ptr = getelementptr inbounds double, double* {points}, {ints} %{name}_last
  %{name}_val = call {vec} {gather}({ptrs} %{name}_ptr, i32 8, {bools} {every}, {vec} undef)
  %{name}_below = fcmp olt {vec} %{name}_val, %x
  %{name}_take = zext {bools} %{name}_below to {ints}
  %{name}_add = mul {ints} %{name}_take, %{name}_sv
  %{name}_pos_next = add {ints} %{name}_pos, %{name}_add
  %{name}_s_next = lshr i64 %{name}_s, 1
  br label %{name}_search""")
    out.append("tally:")
    for j in range(lanes):
        out.append(f"""  %x{j} = extractelement {vec} %x, i32 {j}
  %g{j} = extractelement {ints} %grid_pos, i32 {j}
  %b{j} = extractelement {ints} %edge_pos, i32 {j}
  %nan{j} = fcmp uno double %x{j}, %x{j}
  %bin{j} = select i1 %nan{j}, i64 %missing, i64 %b{j}
  %binp{j} = getelementptr inbounds i64, i64* %bins, i64 %bin{j}
  %binv{j} = load i64, i64* %binp{j}
  %binw{j} = add i64 %binv{j}, 1
  store i64 %binw{j}, i64* %binp{j}
  %in{j} = icmp ult i64 %g{j}, %k
  %gi{j} = select i1 %in{j}, i64 %g{j}, i64 0
  %gp{j} = getelementptr inbounds double, double* %grid, i64 %gi{j}
  %gv{j} = load double, double* %gp{j}
  %eq{j} = fcmp oeq double %gv{j}, %x{j}
  %on{j} = and i1 %in{j}, %eq{j}
  %twice{j} = shl i64 %g{j}, 1
  %onz{j} = zext i1 %on{j} to i64
  %cell{j} = add i64 %twice{j}, %onz{j}
  %c{j} = select i1 %nan{j}, i64 %nan_cell, i64 %cell{j}
  %cp{j} = getelementptr inbounds i64, i64* %cells, i64 %c{j}
  %cv{j} = load i64, i64* %cp{j}
  %cw{j} = add i64 %cv{j}, 1
  store i64 %cw{j}, i64* %cp{j}""")
    out.append(f"""  %i_next = add i64 %i, {lanes}
  %more = icmp slt i64 %i_next, %n
  br i1 %more, label %load, label %exit
exit:
  ret void
}}""")
    return "\n".join(out)
