"""HW9's grader-only helpers: references, part tables, stand-ins and known wrong variants of the hidden tests.

Grader process only, never released (it lives beside source/, not in it) and never bound into the grading
sandbox. course_config.py names this file for hw9 (``CourseExecute.graders``); the kit puts its public names
in every hidden region of hw9, after the course helpers listed in HELPERS (the grader's copies, loaded from
beside the notebook) and the kit's general checks (attnkit.grader.checks). Everything students and the visible
tests need stays in ``source/hw9/attention_checks.py``; this module may use it. Nothing here prints an answer:
messages name the part and the symptom.
"""
from __future__ import annotations

import ast
import functools
import itertools
import math

import torch

from attnkit.grader.checks import DIAGNOSES, devices  # noqa: F401
from attnkit.grader.hidden import call, run_student
from attnkit.grader.remote import KernelGone, StudentError

HELPERS = ("attention_checks",)   # the course helper modules (beside the notebooks) imported below

# one tolerance rule and one list of classic mistakes, written there
from attention_checks import (_PART_METHODS, as_number, assert_close, blank_words, close,  # noqa: E402,F401
                              growth_exponents, likely_mistake, matching_mistake, mha_variants, tolerance)

_Tensor = torch.Tensor


def assert_within_se(estimate, truth, se, *, part, what="estimate", k=6.0, slack=0.0, quiet=False):
    """A Monte Carlo estimate within k standard errors (plus a fixed slack) of the exact value.

    With a fixed seed the check is deterministic; with k = 6 a right estimator fails it
    with probability about 2e-9 for any seed.
    """
    value = as_number(estimate, part=part, what=what)
    bound = k * float(se) + float(slack)
    err = abs(value - float(truth))
    if not err <= bound:
        raise AssertionError(f"{part}: {what} is {err / float(se):.1f} standard errors away from the exact "
                             f"value (allowed {k:g}); check what you sample and what you average")
    if not quiet:
        print(f"ok  {part}: {what} within {k:g} standard errors ({err / float(se):.2f} SE off)")
    return value


def q4_computed(tensors, expected, rtol=None, atol=None):
    """True when some recorded tensor holds ``expected``'s values, with its axes in any order.

    Lets a test ask "was q = x W_q computed?" whether the student kept q as [b, h, k] or
    as [h, b, k] and permuted later. Size-1 axes are ignored on both sides.
    """
    expected = expected.squeeze()  # a [b, 1, k] copy of k = x W_k counts as k
    want = tuple(expected.shape)
    for t in tensors:
        t = t.squeeze()
        if t.dim() != expected.dim() or sorted(t.shape) != sorted(want):
            continue
        for perm in itertools.permutations(range(t.dim())):
            if tuple(t.shape[p] for p in perm) == want and close(t.permute(*perm), expected, rtol, atol):
                return True
    return False


def _fmt_exponents(exps):
    return " ".join(f"{n}^{e:.2f}" for n, e in exps.items())


def check_growth(cost, reference, *, part, regimes, names=("N", "D", "M"), tol=0.2, hints=None):
    """Compare how ``cost`` and ``reference`` grow, variable by variable, in each regime.

    ``regimes`` maps a description (e.g. "N >> D >> M") to a point of log2 sizes
    (e.g. (60, 20, 5)); constants and lower-order terms do not change the exponents
    there, so every expression with the same big-O passes. The message names the
    variable whose exponent is off and the student's own exponents, never the reference's.
    ``hints`` maps a variable name to an extra sentence for that variable.
    """
    for label, logs in regimes.items():
        point = tuple(2 ** int(l) for l in logs)
        got = growth_exponents(cost, point, names)
        want = growth_exponents(reference, point, names)
        off = [n for n in names if abs(got[n] - want[n]) > tol]
        if off:
            where = ", ".join(f"{n}=2^{int(l)}" for n, l in zip(names, logs))
            extra = " ".join((hints or {}).get(n, "") for n in off).strip()
            raise AssertionError(
                f"{part}: with {label} ({where}) your expression grows like {_fmt_exponents(got)} as each "
                f"variable doubles; the growth in {', '.join(off)} does not match the cost of the method."
                + (f" {extra}" if extra else ""))
        print(f"ok  {part}: growth exponents match with {label} (tolerance {tol})")


# ---- Q3: the student's scaled_dot_product_attention graded line by line (grader/remote.py's traced calls)
SDPA_LOCALS = ("attn_scores", "attn_probs", "output")   # the names the given skeleton binds


def sdpa_ref(Q, K, V, mask=None):
    """Scaled dot-product attention in float64 (mask == 0: -1e9), in V's dtype."""
    s = (Q.double() @ K.double().transpose(-2, -1)) / math.sqrt(Q.shape[-1])
    if mask is not None:
        s = s.masked_fill(mask == 0, -1e9)
    return (softmax_ref(s, -1) @ V.double()).to(V.dtype)


def sdpa_cases(kernel, cls, seed):
    """(the student's own instance (own_instance), Q, K, V, mask or None, stand-ins, where) over devices, dtypes,
    3 shapes, with and without a mask. The stand-ins are random scores and random weights (rows that sum
    to 1): neutral values that take the place of a line that raised, never a reference value."""
    g = torch.Generator().manual_seed(seed)
    for dev in devices():
        for dtype in (torch.float32, torch.float64):
            for (b, h, lq, lk, dk, dv) in [(1, 1, 3, 4, 2, 2), (2, 3, 5, 7, 4, 4), (3, 2, 6, 6, 8, 5)]:
                Q = torch.randn(b, h, lq, dk, generator=g, dtype=dtype).to(dev)
                K = torch.randn(b, h, lk, dk, generator=g, dtype=dtype).to(dev)
                V = torch.randn(b, h, lk, dv, generator=g, dtype=dtype).to(dev)
                mask = (torch.rand(b, 1, lq, lk, generator=g) > 0.3).to(dev)
                mask[..., 0] = True
                standins = {"attn_scores": torch.randn(b, h, lq, lk, generator=g, dtype=dtype).to(dev),
                            "attn_probs": softmax_ref(torch.randn(b, h, lq, lk, generator=g, dtype=dtype), -1).to(dev)}
                m = own_instance(kernel, cls, h * dk, h, dtype=dtype, device=dev)
                for use_mask in (False, True):
                    where = f"({'with' if use_mask else 'without'} a mask, {str(dtype)[6:]}, {dev})"
                    yield m, Q, K, V, (mask if use_mask else None), standins, where


def sdpa_runs(kernel, cls, part, m, Q, K, V, mask, standins, replace=()):
    """(is the whole function right?, the plain traced run, the run with failing lines skipped and the
    first assignment of each name in ``replace`` replaced by its stand-in).

    A student whose whole function computes attention passes every line of it, however it is written."""
    refuse_fused(part, kernel, cls, ["scaled_dot_product_attention"])   # not NotIsolable: no whole-layer rescue
    fn = cls.scaled_dot_product_attention
    plain = call(part, kernel.call_traced, fn, m, Q, K, V, mask, functions=[fn], watch=SDPA_LOCALS)
    want_shape = tuple(Q.shape[:-1]) + (V.shape[-1],)
    if isinstance(plain.value, _Tensor) and tuple(plain.value.shape) == want_shape and close(plain.value, sdpa_ref(Q, K, V, mask)):
        return True, plain, plain
    skipping = call(part, kernel.call_traced, fn, m, Q, K, V, mask, functions=[fn], watch=SDPA_LOCALS,
                    standins=standins, skip_failures=True, replace=replace)
    outside = [s for s in skipping.skipped
               if s["assigns"] not in SDPA_LOCALS and not (s["error"].blank or "_____" in str(s["error"]))]
    if outside:  # a line of the student's own (a helper, an attribute) failed: this part cannot be isolated
        err = outside[0]["error"]
        raise NotIsolable(f"{part}: run alone, a line of scaled_dot_product_attention that is not this part's raised "
                          f"{type(err).__name__}: {err}")
    return False, plain, skipping


def own_instance(kernel, cls, d_model, num_heads, *, dtype=None, device=None):
    """The student's own instance ``cls(d_model, num_heads)``, built by their ``__init__`` (a statement of it that
    raises, e.g. another blank, jumped over as in (a)-(c)), so every attribute it sets (a temperature, a softmax
    module, a submodule) exists; moved to ``dtype``/``device``. A bare instance given the API's attributes
    (d_model, num_heads, d_k: the sizes the grader chose, never read off the student's object) only when
    ``__init__`` cannot finish."""
    try:
        init = kernel.getattr(cls, "__init__")
        m = kernel.new(cls)
        run = kernel.call_traced(init, m, d_model, num_heads, functions=[init], skip_failures=True)
        if run.error is None:
            if dtype is not None or device is not None:
                kernel.call(kernel.getattr(m, "to"), device=device, dtype=dtype)
            return m
    except KernelGone:
        raise
    except StudentError:
        pass
    return kernel.bare(cls, d_model=d_model, num_heads=num_heads, d_k=d_model // num_heads)


def isolated_call(part, fn, *args, **kwargs):
    """``call`` for a part run with the other pieces replaced by stand-ins: a blank is named; any other error of
    the student's code means the part cannot be graded on its own (NotIsolable), so the whole layer decides."""
    return run_student(part, fn, args, kwargs, lambda name, exc: NotIsolable(
        f"{part}: {name}, run with the other pieces replaced by the grader's, raised {type(exc).__name__}: {exc}"))


def line_failure(run, name, part, label):
    """An AssertionError for the statement assigning ``name`` if it raised (None if it did not)."""
    err = run.skipped_for(name) or (run.error if run.first(name) is None else None)
    if err is None:
        return None
    if err.blank or "_____" in str(err):
        return AssertionError(blank_words(part, label))
    return AssertionError(f"{part}: line {label} raised {type(err).__name__}: {err}")


# ---- The rule for a part that cannot be graded alone: the student's whole layer decides
LAYER_CASES = [(2, 5, 7, 12, 3), (1, 3, 3, 6, 1), (2, 4, 6, 32, 4)]   # batch, queries, keys, d_model, heads


def layer_right(kernel, cls, seed=1826) -> bool:
    """Does the student's layer ``cls(d_model, num_heads)``, exactly as written, compute multi-head attention
    (torch.nn.MultiheadAttention with its weights: self-, cross- and causally masked attention, float32 and
    float64, every device)? Any error, missing projection or wrong size is a no."""
    g = torch.Generator().manual_seed(seed)
    names = ("W_q", "W_k", "W_v", "W_o")
    if fused_attention_calls(kernel, cls):  # torch's own attention earns nothing on the whole path
        print("(d)-(f) use torch's built-in attention; write your own: the whole layer is not counted")
        return False
    try:
        for dev in devices():
            for dtype in (torch.float32, torch.float64):
                for b, lq, lk, d, h in LAYER_CASES:
                    m = cls(d, h)
                    m.to(device=dev, dtype=dtype)
                    values = kernel.get(m, *(f"{n}.{p}" for n in names for p in ("weight", "bias")))
                    ref = torch.nn.MultiheadAttention(d, h, batch_first=True).to(device=dev, dtype=dtype)
                    with torch.no_grad():
                        ref.in_proj_weight.copy_(torch.cat(values[0:6:2]))
                        ref.in_proj_bias.copy_(torch.cat(values[1:6:2]))
                        ref.out_proj.weight.copy_(values[6])
                        ref.out_proj.bias.copy_(values[7])
                        x = torch.randn(b, lq, d, generator=g, dtype=dtype).to(dev)
                        y = torch.randn(b, lk, d, generator=g, dtype=dtype).to(dev)
                        causal = torch.tril(torch.ones(lq, lq, dtype=torch.bool, device=dev))
                        for args, kw, mask in (((x, x, x), {}, None), ((x, y, y), {}, None),
                                               ((x, x, x), {"attn_mask": ~causal}, causal)):
                            want, _ = ref(*args, need_weights=False, **kw)
                            got = m(*args) if mask is None else m(*args, mask)
                            if not (isinstance(got, _Tensor) and got.dtype == dtype and close(got, want)):
                                return False
    except Exception:  # noqa: BLE001 (the student's error, a missing W_*, a size torch refuses: not right)
        return False
    return True


class NotIsolable(AssertionError):
    """A part whose line cannot be found in the student's code (rewritten): the whole layer decides."""


# The methods a part's isolated check runs: when one is gone from the class, the part cannot be isolated (the one
# table, the helper's: its visible checks decide the same way).
PART_METHODS = _PART_METHODS
# torch's own attention (fused kernels and the whole layer): calling it is not implementing attention.
FUSED_ATTENTION = ("scaled_dot_product_attention", "MultiheadAttention", "multi_head_attention_forward",
                   "_native_multi_head_attention")


def fused_attention_calls(kernel, cls, names=None) -> list:
    """The methods of the student's ``cls`` (``names``, or every one it defines) whose source uses torch's own
    attention (F.scaled_dot_product_attention, nn.MultiheadAttention, ...); ``self.scaled_dot_product_attention``,
    the student's own method, does not count. Read from the submitted notebook the grader holds
    (``kernel.sources``), never through the kernel (whose inspect the student's code may have patched): every
    definition of the class in the student's cells, and every ``Class.method = ...`` there. A method whose
    source is not there cannot be checked: AssertionError (a failure, never a pass). A call hidden behind
    getattr or a helper outside the class is not seen."""
    cname = getattr(cls, "__name__", None)
    methods = _notebook_methods(kernel.sources, cname)
    if methods is None:
        raise AssertionError(f"the source of {cname} is not in your notebook, so the rule against torch's "
                             "own attention cannot be checked: define the class in the notebook's answer cell")
    found = []
    for name in sorted(methods) if names is None else names:
        if name not in methods:
            raise AssertionError(f"the source of {cname}.{name} is not in your notebook, so the rule against "
                                 "torch's own attention cannot be checked: define it in the class")
        if any(_uses_fused(node) for node in methods[name]):
            found.append(name)
    return found


def _uses_fused(tree) -> bool:
    for node in ast.walk(tree):
        attr = (node.attr if isinstance(node, ast.Attribute)
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
                else node.id if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) else None)
        if attr in FUSED_ATTENTION:
            return True
    return False


@functools.lru_cache(maxsize=64)
def _cell_nodes(src: str) -> tuple:
    """Every AST node of one cell, its IPython syntax translated as the kernel does; () if it does not parse.
    Read, never changed: a cell is parsed once, not once per test that asks (4 ms a cell); the cache holds
    about one notebook's cells (students are graded one after another)."""
    from IPython.core.inputtransformer2 import TransformerManager
    try:
        return tuple(ast.walk(ast.parse(TransformerManager().transform_cell(src))))
    except (SyntaxError, ValueError):
        return ()


def _notebook_methods(sources, cname):
    """{method name: [its definitions' AST nodes]} for class ``cname`` in the student's cells ``sources``
    (every ``class cname`` anywhere in them, and every ``cname.method = value``, a function of the notebook
    named there counting as its body; a method it does not define, from its bases that the notebook
    defines); None when no ``class cname`` is there. IPython syntax (magics) is translated as the kernel
    does; a cell that does not parse defined nothing."""
    if not sources or not isinstance(cname, str):
        return None
    nodes = [node for src in sources for node in _cell_nodes(src)]
    functions = {n.name: n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    classes: dict = {}
    for node in nodes:
        if isinstance(node, ast.ClassDef):
            classes.setdefault(node.name, []).append(node)

    def methods_of(name, seen):
        methods = {}
        for cdef in classes.get(name, ()):
            for item in cdef.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    methods.setdefault(item.name, []).append(item)
                elif isinstance(item, ast.Assign):  # forward = some_function
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            methods.setdefault(target.id, []).extend(_value_and_body(item.value, functions))
        for node in nodes:  # name.method = value, anywhere
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == name:
                        methods.setdefault(target.attr, []).extend(_value_and_body(node.value, functions))
        bases = {b.id for cdef in classes.get(name, ()) for b in cdef.bases if isinstance(b, ast.Name)}
        for base in sorted(bases - seen):
            for method, defs in methods_of(base, seen | {name, base}).items():
                methods.setdefault(method, defs)
        return methods

    return methods_of(cname, {cname}) if cname in classes else None


def _value_and_body(value, functions) -> list:
    """An assigned value, and the notebook's function of that name if it names one."""
    named = functions.get(value.id) if isinstance(value, ast.Name) else None
    return [value] + ([named] if named is not None else [])


def refuse_fused(part, kernel, cls, names=None):
    """Fail ``part`` when the named methods call torch's own attention (the homework asks for your own)."""
    used = fused_attention_calls(kernel, cls, names)
    if used:
        raise AssertionError(f"{part}: {', '.join(used)} uses torch's built-in attention "
                             "(F.scaled_dot_product_attention / nn.MultiheadAttention); write your own")


def alone_or_whole(part, kernel, cls, check):
    """Grade one part alone (``check()`` raises AssertionError if it fails). Only when the part cannot be
    isolated (its line is not found: NotIsolable, or a method it needs is gone from the class) does the
    student's whole layer decide, so a rewrite never costs a right layer anything and a wrong one costs only
    this part. A blank or a wrong value of the part's own line is never rescued by the rest of the layer."""
    try:
        check()
    except KernelGone:
        raise
    except Exception as exc:  # noqa: BLE001 (a failed check, or the student's error: e.g. the method is gone)
        if "blank `_____`" in str(exc):  # a blank earns nothing, however right the rest is
            raise
        if not (isinstance(exc, NotIsolable) or _methods_gone(kernel, cls, part)):
            # graded alone and failed: isolation gives partial credit, it never takes points from a layer that
            # is right as a whole and runs this part's method (the student's own layer, in its own shape)
            if not (layer_right(kernel, cls) and _exercised(kernel, cls, part)):
                raise
            print(f"ok  {part}: graded with your whole layer (it matches torch.nn.MultiheadAttention and runs this "
                  "part), as this part could not be graded on its own in your layer's shape")
            return
        if not layer_right(kernel, cls):
            raise
        print(f"ok  {part}: graded with your whole layer (it matches torch.nn.MultiheadAttention), "
              "as this part could not be graded on its own")


def _exercised(kernel, cls, part) -> bool:
    """Does the student's own layer's forward run the method(s) of ``part`` (e.g. split_heads for (g))? forward
    itself for (h), and the projections of (a)-(c), always."""
    names = {p: methods[0] for p, methods in PART_METHODS.items() if p != "(h)"}   # (h): forward itself
    name = names.get(part.split()[0])
    if name is None:
        return True
    try:
        fn = kernel.getattr(cls, name)
        m = cls(12, 3)
        x = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(1827))
        run = kernel.call_traced(m, x, x, x, functions=[fn])
    except KernelGone:
        raise
    except StudentError:
        return False
    return run.error is None and name in run.entered


def _methods_gone(kernel, cls, part) -> bool:
    for name in PART_METHODS.get(part.split()[0], ()):
        try:
            kernel.getattr(cls, name)
        except KernelGone:
            raise
        except StudentError:
            return True
    return False


def not_isolable(part, where, name):
    return NotIsolable(f"{part}: your scaled_dot_product_attention does not compute attention {where}, and it no "
                       f"longer binds {name} as the given code does, so this line cannot be graded on its own")


def softmax_ref(scores, dim=-1):
    """Softmax written from its definition (max subtracted), in the scores' dtype."""
    e = torch.exp(scores - scores.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


# ---- Diagnoses: a failed part's output compared with known wrong variants computed here, in the grader.
# Only a sentence naming the mistake goes back to the student: never an input, a reference value or the answer.

def diagnosis(got, variants, rtol=None, atol=None) -> str:
    """" (likely: <sentence>)" for the first of ``variants`` ({sentence: tensor} or [(sentence, tensor)]) that the
    student's output ``got`` matches (attention_checks.matching_mistake); "" when none does, or when the course
    turned diagnoses off."""
    return matching_mistake(got, variants, rtol, atol) if DIAGNOSES.get() else ""


def layer_variants(x, kv, mask, weights, h) -> list:
    """[(sentence, the output of a layer with that classic mistake)] (attention_checks.mha_variants), for ``diagnosis``."""
    return mha_variants(x, kv, mask, weights, h)


def assert_layer(got, want, *, part, what, x, kv, mask, weights, heads):
    """assert_close for a whole layer's output; on failure the message names a classic mistake the output matches."""
    try:
        assert_close(got, want, part=part, what=what, quiet=True)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnosis(got, layer_variants(x, kv, mask, weights, heads))}") from None


def scores_diagnosis(s, Q, K) -> str:
    """The likely mistake of a wrong (d): the student's first scores ``s`` against the classic variants."""
    ref = Q.double() @ K.double().transpose(-2, -1)
    twice = "the scores are QQᵀ or KKᵀ: one operand is used twice"
    return diagnosis(s, [("the scores are KQᵀ: keys and queries swapped", ref.transpose(-2, -1)),
                         ("the scores are divided by d_k instead of √d_k", ref / Q.shape[-1]),
                         (twice, Q.double() @ Q.double().transpose(-2, -1)),
                         (twice, K.double() @ K.double().transpose(-2, -1))]
                     + ([("the scores are divided by √d_model instead of √d_k",   # Q: (B, h, L, d_k)
                          ref / math.sqrt(Q.shape[1] * Q.shape[-1]))] if Q.dim() == 4 else []))


def split_diagnosis(got, x, h) -> str:
    """The likely mistake of a wrong split_heads (g)."""
    b, l, d = x.shape
    return diagnosis(got, {"the heads are split with view alone, without the transpose": x.reshape(b, h, l, d // h)})


# ---- Q4: one decoding step with a classic mistake, computed here for the diagnoses of a wrong step.
def _q4_variant_step(x, prev_K, prev_V, W_q, W_k, W_v, W_o, *, scale=1.0, axis=-1, new=True):
    """One step in float64 (shared cache when W_k is [d, k], per-head when [h, d, k]) with one mistake switched
    on: the logits multiplied by ``scale``, the softmax over ``axis`` of [b, h, n+1], or (new=False) the new
    token's key and value left out of the attention (they are still appended to the returned cache)."""
    x, W_q, W_k, W_v, W_o = (t.double() for t in (x, W_q, W_k, W_v, W_o))
    heads = W_k.dim() == 3
    q = torch.einsum("bd,hdk->bhk", x, W_q)
    k = torch.einsum("bd,hdk->bhk" if heads else "bd,dk->bk", x, W_k)
    v = torch.einsum("bd,hdv->bhv" if heads else "bd,dv->bv", x, W_v)
    K = torch.cat([prev_K.double(), k.unsqueeze(-2)], dim=-2)   # (b, [h,] n+1, k)
    V = torch.cat([prev_V.double(), v.unsqueeze(-2)], dim=-2)
    Ka, Va = (K, V) if new else (prev_K.double(), prev_V.double())
    logits = torch.einsum("bhk,bhnk->bhn" if heads else "bhk,bnk->bhn", q, Ka) * scale
    e = torch.exp(logits - logits.amax(axis, keepdim=True))
    w = e / e.sum(axis, keepdim=True)
    o = torch.einsum("bhn,bhnv->bhv" if heads else "bhn,bnv->bhv", w, Va)
    return torch.einsum("bhv,hvd->bd", o, W_o), K, V


def _q4_mistakes(k, d):
    """[(sentence, keyword arguments of _q4_variant_step)]: the classic mistakes of a decoding step."""
    return [("the logits are divided by √k; the homework's step (the paper's pseudocode) leaves them unscaled",
             dict(scale=k ** -0.5)),
            ("the logits are divided by √d (the model width); the homework's step leaves them unscaled",
             dict(scale=d ** -0.5)),
            ("the softmax normalises over the heads (axis 1) instead of the n+1 cached positions", dict(axis=1)),
            ("the new token's key and value are left out of the attention (it attends over prev_K and prev_V only)",
             dict(new=False))]


def q4_variants(x, prev_K, prev_V, W_q, W_k, W_v, W_o) -> list:
    """[(sentence, the output y of one step with that classic mistake)] for ``diagnosis`` of a wrong y."""
    k, d = W_q.shape[-1], x.shape[-1]
    out = []
    for sentence, kw in _q4_mistakes(k, d):
        if kw.get("new") is False and prev_K.shape[-2] == 0:
            continue  # no old position to attend to
        out.append((sentence, _q4_variant_step(x, prev_K, prev_V, W_q, W_k, W_v, W_o, **kw)[0]))
    return out


def q4_decode_variants(X, K0, V0, W_q, W_k, W_v, W_o) -> list:
    """[(sentence, the outputs [b, T, d] of decoding X [b, T, d] from the cache (K0, V0) with that mistake)]."""
    k, d = W_q.shape[-1], X.shape[-1]
    out = []
    for sentence, kw in _q4_mistakes(k, d):
        if kw.get("new") is False:
            continue  # the first step from an empty cache has nothing to attend to
        K, V, ys = K0, V0, []
        for t in range(X.shape[1]):
            y, K, V = _q4_variant_step(X[:, t], K, V, W_q, W_k, W_v, W_o, **kw)
            ys.append(y)
        out.append((sentence, torch.stack(ys, dim=1)))
    return out


def assert_q4(got, want, *, part, what, variants, extra=None):
    """assert_close for a Q4 output; on failure the message names a classic mistake the output matches
    (``variants``: a function returning q4_variants' list, computed only when needed; ``extra``: a function
    returning another diagnosis, tried when no variant matches)."""
    try:
        assert_close(got, want, part=part, what=what, quiet=True)
    except AssertionError as exc:
        hint = diagnosis(got, variants()) if DIAGNOSES.get() else ""
        if not hint and extra is not None and DIAGNOSES.get():
            hint = extra()
        raise AssertionError(f"{exc}{hint}") from None


def assert_q4_cache(got, want, h, *, part, what):
    """assert_close for a multi-query cache; on failure the message says when it is a per-head copy."""
    try:
        assert_close(got, want, part=part, what=what, quiet=True)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{q4_cache_diagnosis(got, want, h)}") from None


_PER_HEAD_CACHE = ("your cache keeps a copy of the shared keys and values for every head (a per-head cache, as in "
                   "multi-head attention); multi-query attention keeps one [b, n+1, k] cache that all heads share")


def q4_cache_diagnosis(got, ref, h) -> str:
    """The likely mistake of a multi-query cache ``got`` that is not ``ref`` [b, n+1, k]: the shared cache
    repeated once per head, with the head axis anywhere (the cache of repeat_kv, or of multi-head attention)."""
    if not (DIAGNOSES.get() and isinstance(got, _Tensor) and got.dim() == ref.dim() + 1 and h > 1):
        return ""
    for axis in range(got.dim()):
        if got.shape[axis] != h:
            continue
        copies = got.movedim(axis, 0)
        if tuple(copies.shape[1:]) == tuple(ref.shape) and all(close(c, ref) for c in copies):
            return f" (likely: {_PER_HEAD_CACHE})"
    return ""


# The known wrong options of Q4 (A)-(E) (../shared/HOMEWORK.md), each with what is wrong with it in words.
Q4_OPTION_MISTAKES = {
    ("A", 2): "[d, q] is one query projection for all heads: the heads keep their own queries in MQA",
    ("A", 3): "[h, q] has no input axis d, so it cannot project x",
    ("B", 1): "[h, d, k] is one key projection per head, as in multi-head attention: MQA shares one among the heads",
    ("B", 3): "[h, k] has no input axis d, so it cannot project x",
    ("C", 1): "its output has the head axis h, which no input has: einsum raises",
    ("C", 3): "x is [b, d]: it has no head axis",
    ("D", 2): "it gives per-head keys [b, h, k], which need a 3-D W_k and no longer fit the shared [b, n, k] cache",
    ("D", 3): "its output has the head axis h, which no input has: einsum raises",
    ("E", 1): "it gives per-head values [b, h, v], which need a 3-D W_v and no longer fit the shared [b, n, v] cache",
    ("E", 2): "its output has the head axis h, which no input has: einsum raises",
}


def q4_option_diagnosis(part, option) -> str:
    """What is wrong with a known wrong option of Q4 (A)-(E), in words; "" when diagnoses are off."""
    try:
        sentence = Q4_OPTION_MISTAKES.get((part, int(option))) if DIAGNOSES.get() else None
    except (TypeError, ValueError):  # not a number: the format check names that
        sentence = None
    return f" (likely: {sentence})" if sentence else ""
