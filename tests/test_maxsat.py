"""MAX-SAT problem layer: generator, DIMACS I/O, weighted/partial semantics, delta evaluation."""
import io
import itertools

import pytest
import torch

from zoopt.problems.maxsat import (BlockDelta, MaxSATInstance, VarClauseIndex, _parse_slow, format_solution,
                                   parse_solution, random_ksat, read_dimacs, write_dimacs)


def brute_cost(clauses, weights, hard, assign):
    """Cost by the definition, clause by clause in Python."""
    soft_total = sum(w for w, h in zip(weights, hard, strict=True) if not h)
    cost = 0.0
    for clause, w, h in zip(clauses, weights, hard, strict=True):
        sat = any(assign[abs(l) - 1] == (l > 0) for l in clause)
        if not sat:
            cost += (soft_total + 1) if h else w
    return cost


# -- generator --------------------------------------------------------------------------------

def test_random_ksat_is_deterministic_and_well_formed():
    a, b, c = random_ksat(500, seed=3), random_ksat(500, seed=3), random_ksat(500, seed=4)
    assert torch.equal(a.lit_var, b.lit_var) and torch.equal(a.lit_neg, b.lit_neg)
    assert not torch.equal(a.lit_var, c.lit_var)
    assert a.n_clauses == int(4.27 * 500) == 2135 and a.uniform_k == 3 and a.n_lits == 3 * 2135
    rows = a.lit_var.view(-1, 3)
    s = rows.sort(1).values
    assert bool((s[:, 1:] != s[:, :-1]).all())                # 3 distinct variables per clause
    assert int(a.lit_var.min()) >= 0 and int(a.lit_var.max()) < 500
    assert 0.45 < a.lit_neg.float().mean().item() < 0.55
    assert random_ksat(50, k=5, n_clauses=7, seed=0).clause_len.tolist() == [5] * 7
    with pytest.raises(ValueError, match="n_vars"):
        random_ksat(0)
    with pytest.raises(ValueError, match="k must"):
        random_ksat(2, k=3)


# -- DIMACS I/O -------------------------------------------------------------------------------

def test_cnf_round_trip_and_fast_equals_slow_parser(tmp_path):
    inst = random_ksat(60, seed=1)
    path = tmp_path / "f.cnf"
    write_dimacs(inst, path)
    text = path.read_text()
    assert text.startswith("p cnf 60 256\n")
    back = read_dimacs(path)
    assert back.clauses() == inst.clauses() and back.n_vars == 60
    assert not back.is_weighted and not back.is_partial
    slow = _parse_slow(text)
    assert slow.clauses() == inst.clauses()


def test_wcnf_round_trip_weighted_partial(tmp_path):
    clauses = [[1, -2], [2, 3, -4], [-1], [4], [], [3, 3, -3]]
    inst = MaxSATInstance.from_clauses(clauses, n_vars=5, weights=[3, 1, 7, 2, 5, 4],
                                       hard=[False, True, False, True, False, False])
    path = tmp_path / "f.wcnf"
    write_dimacs(inst, path)
    top = 3 + 7 + 5 + 4 + 1
    assert path.read_text().splitlines()[0] == f"p wcnf 5 6 {top}"
    for back in (read_dimacs(path), _parse_slow(path.read_text())):
        assert back.clauses() == clauses and back.n_vars == 5
        assert back.hard.tolist() == [False, True, False, True, False, False]
        assert back.weights[~back.hard].tolist() == [3, 7, 5, 4]


def test_new_wcnf_format_and_comments():
    text = "c header-less 2022 format\nh 1 2 0\n5 -1 0\nc middle comment\n2 -2 3 0\nh -3 0\n"
    inst = read_dimacs(io.StringIO(text))
    assert inst.clauses() == [[1, 2], [-1], [-2, 3], [-3]]
    assert inst.hard.tolist() == [True, False, False, True]
    assert inst.weights[1].item() == 5 and inst.weights[2].item() == 2
    assert _parse_slow(text).clauses() == inst.clauses()


@pytest.mark.parametrize("text, line, fragment", [
    ("p cnf 3 2\n1 2 0\n1 x 0\n", 3, "not an integer"),
    ("p cnf 3 2\n1 2 0\n1 4 0\n", 3, "above the header"),
    ("p cnf 3 2\n1 2 0\n-1 3\n", 3, "not terminated"),
    ("c\np cnf 3 3\n1 2 0\n-1 3 0\n", 2, "declares 3 clauses"),
    ("p wcnf 3 2 10\n0 1 0\n3 2 0\n", 2, "weight must be > 0"),
    ("p wcnf 3 2 10\n4 1 0\nq 2 0\n", 3, "not a number"),
    ("p cnf 3\n1 0\n", 1, "malformed header"),
    ("1 2 0\np cnf 3 1\n", 2, "header after clauses"),
    ("p cnf 3 1\np cnf 3 1\n1 0\n", 2, "second header"),
])
def test_malformed_files_name_their_line(text, line, fragment):
    with pytest.raises(ValueError) as err:
        read_dimacs(io.StringIO(text))
    assert f"line {line}:" in str(err.value) and fragment in str(err.value)


def test_solution_v_lines_round_trip():
    a = torch.tensor([True, False, False, True, True] * 9)
    text = format_solution(a, cost=12, status="UNKNOWN")
    assert text.splitlines()[:2] == ["o 12", "s UNKNOWN"]
    assert text.splitlines()[2].startswith("v 1 -2 -3 4 5")
    assert text.rstrip().endswith("v 0")
    assert torch.equal(parse_solution(text, 45), a)


# -- semantics ----------------------------------------------------------------------------------

def test_weighted_partial_cost_matches_definition():
    clauses = [[1, 2], [-1, 3], [-2, -3], [3], [-3, 1], []]
    weights, hard = [2.0, 5.0, 1.0, 4.0, 3.0, 6.0], [False, True, False, False, True, False]
    inst = MaxSATInstance.from_clauses(clauses, weights=weights, hard=hard)
    assert inst.top == 2 + 1 + 4 + 6 + 1
    costs = []
    for bits in itertools.product([False, True], repeat=3):
        a = torch.tensor(bits)
        want = brute_cost(clauses, weights, hard, bits)
        assert inst.cost(a) == pytest.approx(want)
        rep = inst.evaluate(a)
        assert rep["cost"] == pytest.approx(want)
        assert rep["hard_violated"] == sum(1 for c, h in zip(clauses, hard, strict=True) if h and not any(bits[abs(l) - 1] == (l > 0) for l in c))
        costs.append(want)
    batch = torch.tensor(list(itertools.product([False, True], repeat=3)))
    assert inst.cost_batch(batch, chunk=3).tolist() == pytest.approx(costs)
    # x1 = x3 = True satisfies both hard clauses; only the empty clause and (-2 -3) / (1 2) are at stake
    assert inst.evaluate(torch.tensor([True, False, True]))["hard_violated"] == 0
    assert inst.evaluate(torch.tensor([True, True, False]))["hard_violated"] == 1


# -- delta evaluation ---------------------------------------------------------------------------

def _instances():
    g = torch.Generator().manual_seed(5)
    yield random_ksat(41, seed=7)
    yield random_ksat(12, n_clauses=90, seed=8)                       # dense: many clauses share a block
    clauses = []
    for _ in range(70):                                               # mixed lengths, repeats, tautologies
        k = int(torch.randint(0, 6, (1,), generator=g))
        v = torch.randint(1, 10, (k,), generator=g)
        s = torch.randint(0, 2, (k,), generator=g) * 2 - 1
        clauses.append((v * s).tolist())
    w = (torch.rand(70, generator=g) * 5 + 0.5).tolist()
    hard = (torch.rand(70, generator=g) < 0.2).tolist()
    yield MaxSATInstance.from_clauses(clauses, n_vars=9, weights=w, hard=hard)


@pytest.mark.parametrize("block", [2, 3])
def test_block_delta_equals_full_evaluation(block):
    g = torch.Generator().manual_seed(block)
    for inst in _instances():
        bd = BlockDelta(inst, block=block)
        for _ in range(3):
            a = torch.rand(inst.n_vars, generator=g) < 0.5
            counts, base, scores = bd.prepare(a)
            assert base == pytest.approx(inst.cost(a))
            vals = torch.rand(bd.n_blocks * block, 5, generator=g) < 0.5
            d = bd.deltas(a, counts, vals, scores)
            for b in range(bd.n_blocks):
                lo, hi = b * block, min(inst.n_vars, (b + 1) * block)
                for v in range(5):
                    a2 = a.clone()
                    a2[lo:hi] = vals[lo:hi, v]
                    assert d[b, v].item() == pytest.approx(inst.cost(a2) - base, abs=1e-9)


def test_csr_candidate_costs_equal_full_evaluation():
    g = torch.Generator().manual_seed(11)
    for inst in _instances():
        idx = VarClauseIndex(inst)
        for v in range(inst.n_vars):   # the CSR lists exactly the clauses holding v
            want = sorted(c for c, cl in enumerate(inst.clauses()) for l in cl if abs(l) == v + 1)
            assert sorted(idx.clauses_of(v).tolist()) == want
        a = torch.rand(inst.n_vars, generator=g) < 0.5
        counts = inst.true_counts(a)
        base = inst.cost(a)
        pairs = torch.stack([torch.randperm(inst.n_vars, generator=g)[:2] for _ in range(40)])
        vals = torch.rand(40, 2, generator=g) < 0.5
        d = idx.candidate_costs(a, counts, pairs, vals)
        for j in range(40):
            a2 = a.clone()
            a2[pairs[j]] = vals[j]
            assert d[j].item() == pytest.approx(inst.cost(a2) - base, abs=1e-9)


# -- bad input: one line naming the file and the line (issue 16 §4) ---------------------------------

BIG = "9" * 25      # beyond 64 bits


@pytest.mark.parametrize("text, fragment", [
    ("p wcnf 3 1 0\n1 1 0\n", "line 1: header numbers must be >= 0 (top > 0)"),       # fast parser accepted it
    ("p wcnf 3 1 -5\n1 1 0\n", "line 1: header numbers"),
    (f"p wcnf 3 1 100\n{BIG} 1 0\n", "line 2: clause weight"),                          # OverflowError before
    (f"p cnf 3 1\n1 {BIG} 0\n", "line 2: literal"),
    (f"h 1 {BIG} 0\n", "line 1: literal"),
    (f"p wcnf 3 1 {BIG}\n1 1 0\n", "line 1: top"),
    ("", "no header and no clauses"),                                                  # IndexError before
    ("c only\nc comments\n", "no header and no clauses"),
    ("1e308 1 0\n1e308 -1 0\n", "line 1: clause weight 1e308 is above 2**63 - 1"),     # cost nan before
    ("9223372036854775807 1 0\n9223372036854775807 -1 0\n", "soft clauses weigh"),
    ("p cnf 100000000000 1\n1 0\n", "line 1: header declares 100000000000 variables"),  # reached the allocator
    ("p cnf 2 1\n1 \x00 0\n", "line 2: NUL byte"),
])
def test_bad_files_fail_in_one_line_naming_file_and_line(tmp_path, text, fragment):
    path = tmp_path / "in.wcnf"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_dimacs(path)
    msg = str(err.value)
    assert msg.startswith(str(path) + ":") and fragment in msg and "\n" not in msg


def test_binary_and_broken_compressed_files_name_the_file(tmp_path):
    png = tmp_path / "image.cnf"
    png.write_bytes(b"p cnf 2 1\n\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match=r"image\.cnf: line 2: byte 0x89 is not text"):
        read_dimacs(png)
    broken = tmp_path / "broken.cnf.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=r"broken\.cnf\.gz: cannot decompress"):
        read_dimacs(broken)
    with pytest.raises(ValueError, match="no such file"):
        read_dimacs(tmp_path / "missing.cnf")


@pytest.mark.parametrize("ext, opener", [(".gz", "gzip"), (".xz", "lzma"), (".bz2", "bz2")])
def test_compressed_instances_are_read_by_extension(tmp_path, ext, opener):
    import importlib

    inst = random_ksat(40, seed=2)
    buf = io.StringIO()
    write_dimacs(inst, buf)
    path = tmp_path / f"f.cnf{ext}"
    with importlib.import_module(opener).open(path, "wt") as fh:
        fh.write(buf.getvalue())
    assert read_dimacs(path).clauses() == inst.clauses()


def test_header_with_no_clauses_is_an_empty_instance():
    for text in ("p wcnf 3 0 10\n", "p cnf 3 0\n"):   # the WCNF one raised IndexError in the fast parser
        inst = read_dimacs(io.StringIO(text))
        assert inst.n_vars == 3 and inst.n_clauses == 0
