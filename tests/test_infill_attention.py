"""Blank infilling's attention (RecSysLLM / GLM on MPT, ../shared/spec/recsysllm.md 1.5, 2.3, 2.5b): a bidirectional
prefix per row and an ALiBi position per token, in the PyTorch path and the model, against a float64 formula; the
extension switched on with zero intra table, no prefix and index positions gives transformers' logits; incremental
decoding with cached key positions equals one full forward. (The Triton kernel's own tests of the same:
tests/test_kernels_prefix.py.)"""
import math

import pytest
import torch

from attention.reference import attention_reference
from model.checkpoint import load_model
from model.convert import convert_from_hf
from model.mpt import alibi_slopes
from test_model import TOL, tiny_hf

transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")


def formula(q, k, v, slopes, positions, prefix_end, key_padding_mask=None):
    """float64, written from the definition: V[i,j] = pad[j] and (j < prefix_end or j <= i + Sk - Sq);
    score = scale q.k - slope |pos_i - pos_j|; rows with no visible key give 0."""
    q, k, v = (t.double() for t in (q, k, v))
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for i in range(Sq):
            qi = i + Sk - Sq
            visible = [j for j in range(Sk) if (j < int(prefix_end[b]) or j <= qi)
                       and (key_padding_mask is None or bool(key_padding_mask[b, j]))]
            if not visible:
                continue
            for h in range(H):
                s = torch.stack([q[b, h, i] @ k[b, h, j] / math.sqrt(D)
                                 - float(slopes[h]) * abs(int(positions[b, qi]) - int(positions[b, j]))
                                 for j in visible])
                p = torch.softmax(s, dim=0)
                out[b, h, i] = sum(p[n] * v[b, h, j] for n, j in enumerate(visible))
    return out


def glm_positions(n_a: int, spans: list[tuple[int, int]]) -> list[int]:
    """Option B (docs/recsysllm.md): Part A at 0..n_a-1, then per span (mask position p, length L) sop at p and
    its tokens at p+1..p+L-1: non-monotone, revisiting Part A's positions."""
    pos = list(range(n_a))
    for p, length in spans:
        pos += [p + t for t in range(length)]
    return pos


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("seq_q", [None, 1, 3])  # None: Sq = Sk (training); 1 and 3: decoding against a cache
def test_prefix_and_positions_against_the_formula(head_dim, seq_q):
    g = torch.Generator().manual_seed(head_dim + (seq_q or 0))
    B, H, Sk = 4, 4, 12
    Sq = Sk if seq_q is None else seq_q
    q, k, v = (torch.randn(B, H, n, head_dim, generator=g) for n in (Sq, Sk, Sk))
    positions = torch.tensor([glm_positions(7, [(2, 3), (5, 2)]), glm_positions(12, []),
                              glm_positions(5, [(1, 4), (3, 3)]), list(range(11, -1, -1))])  # the last non-monotone
    prefix_end = torch.tensor([7, 0, 12, 5])  # GLM's sep, none, everything, another
    pad = torch.ones(B, Sk, dtype=torch.bool)
    pad[3, :2] = False  # a left-padded row
    slopes = alibi_slopes(H)
    ref = formula(q, k, v, slopes, positions, prefix_end, pad)
    for sdpa in (False, True):
        out = attention_reference(q, k, v, slopes, key_padding_mask=pad, positions=positions, prefix_end=prefix_end,
                                  sdpa=sdpa)
        torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-6)


def test_no_prefix_and_index_positions_are_the_causal_attention_exactly():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 32, generator=g) for _ in range(3))
    slopes = alibi_slopes(4)
    plain = attention_reference(q, k, v, slopes)
    same = attention_reference(q, k, v, slopes, positions=torch.arange(10).expand(2, 10),
                               prefix_end=torch.zeros(2, dtype=torch.long))
    assert torch.equal(plain, same)


def test_errors_name_the_input():
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"positions has shape \(1, 3\); expected \(batch, Sk=4\)"):
        attention_reference(q, q, q, alibi_slopes(2), positions=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="prefix_end is given but causal=False"):
        attention_reference(q, q, q, alibi_slopes(2), causal=False, prefix_end=torch.zeros(1, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    hf = tiny_hf()
    hf.save_pretrained(tmp / "hf", safe_serialization=True)
    convert_from_hf(tmp / "hf", tmp / "ours")
    return hf, tmp / "ours"


def test_extension_on_gives_the_base_models_logits(converted):
    """intra table switched on (zero rows, absent from the checkpoint), positions 0..n-1, no prefix: transformers'
    logits (fp32, 1e-5), on the PyTorch path with SDPA (fp32) and without (the explicit softmax)."""
    hf, ours = converted
    ids = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(ids).logits
        model = load_model(ours, intra_positions=16)
        assert model.wte_intra is not None and not model.wte_intra.weight.any()
        kwargs = dict(positions=torch.arange(17).expand(2, 17), prefix_end=torch.zeros(2, dtype=torch.long),
                      intra_positions=torch.randint(0, 16, (2, 17), generator=torch.Generator().manual_seed(4)))
        torch.testing.assert_close(model(ids, **kwargs), ref, **TOL)
        torch.testing.assert_close(model.double()(ids, **kwargs).float(), ref, **TOL)  # explicit softmax path


def test_extension_on_through_the_triton_kernel(converted):
    """The same identity through our Triton kernel (on the CPU under TRITON_INTERPRET=1, conftest.py), and a
    prefix with non-monotone positions equal to the PyTorch path."""
    pytest.importorskip("triton", reason="the Triton kernel needs triton")
    hf, ours = converted
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 512, (2, 13), generator=g)
    with torch.no_grad():
        kernel = load_model(ours, intra_positions=8, attn_impl="triton")
        plain = {"positions": torch.arange(13).expand(2, 13), "prefix_end": torch.zeros(2, dtype=torch.long),
                 "intra_positions": torch.zeros(2, 13, dtype=torch.long)}
        torch.testing.assert_close(kernel(ids, **plain), hf(ids).logits, **TOL)
        infilling = {"positions": torch.tensor([glm_positions(9, [(3, 4)]), glm_positions(6, [(1, 3), (4, 4)])]),
                     "prefix_end": torch.tensor([9, 6]),
                     "intra_positions": torch.randint(0, 8, (2, 13), generator=g)}
        torch.testing.assert_close(kernel(ids, **infilling),
                                   load_model(ours, intra_positions=8)(ids, **infilling), **TOL)


def test_incremental_decoding_with_cached_positions_equals_one_forward(converted):
    """Part A (with a mask at position 2) prefilled with its bidirectional prefix, then a span decoded one token at
    a time at continuation positions: the logits of one full forward over Part A + the span."""
    _, ours = converted
    model = load_model(ours, intra_positions=8)
    with torch.no_grad():
        model.wte_intra.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))  # as if trained
    g = torch.Generator().manual_seed(6)
    part_a, span = torch.randint(0, 512, (2, 9), generator=g), torch.randint(0, 512, (2, 4), generator=g)
    pos_a, pos_span = torch.arange(9).expand(2, 9), (2 + torch.arange(4)).expand(2, 4)  # sop at the mask's 2
    intra_a, intra_span = torch.zeros(2, 9, dtype=torch.long), (1 + torch.arange(4)).expand(2, 4)
    prefix = torch.full((2,), 9)
    with torch.no_grad():
        full = model(torch.cat([part_a, span], 1), positions=torch.cat([pos_a, pos_span], 1), prefix_end=prefix,
                     intra_positions=torch.cat([intra_a, intra_span], 1))
        cache = model.new_kv_cache(2, 16)
        steps = [model(part_a, kv_cache=cache, positions=pos_a, prefix_end=prefix, intra_positions=intra_a)]
        for t in range(4):
            steps.append(model(span[:, t:t + 1], kv_cache=cache, positions=pos_span[:, t:t + 1],
                               intra_positions=intra_span[:, t:t + 1]))
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    assert cache.positions[:, :13].tolist() == [list(range(9)) + [2, 3, 4, 5]] * 2
    # the prefix matters: without it Part A is causal and the logits differ
    with torch.no_grad():
        causal = model(torch.cat([part_a, span], 1), positions=torch.cat([pos_a, pos_span], 1),
                       intra_positions=torch.cat([intra_a, intra_span], 1))
    assert (causal[:, :8] - full[:, :8]).abs().max() > 20 * TOL["atol"]  # tiny random weights: small, not zero


def test_a_model_without_the_extension_refuses_intra_positions(converted):
    _, ours = converted
    model = load_model(ours)
    with pytest.raises(ValueError, match="no intra-position table .* not a blank-infilling model"):
        model(torch.zeros(1, 3, dtype=torch.long), intra_positions=torch.zeros(1, 3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------- special tokens


def test_infill_tokens_take_mpt7b_reserved_rows(shared_data):
    from data.formats.tokenizer import INFILL_TOKENS, add_infill_tokens, load

    path = shared_data / "tokenizer" / "gpt-neox-20b.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (the GPT-NeoX-20B tokenizer of the shared data)")
    tok = load(path)
    ids = add_infill_tokens(tok, 50432)
    assert sorted(ids.values()) == list(range(50277, 50282))  # reserved rows of MPT-7B's 50,432: no resize
    assert add_infill_tokens(tok, 50432) == ids  # idempotent
    text = f"Item: Cream {INFILL_TOKENS['gmask']}{INFILL_TOKENS['start']}"
    assert tok.encode(text, add_special_tokens=False).ids[-2:] == [ids["gmask"], ids["start"]]  # one id each
    with pytest.raises(ValueError, match=r"outside the model's 50,280-row embedding"):
        add_infill_tokens(load(path), 50280)


def test_hf_export_of_an_infilling_model_runs_its_causal_path_and_says_so(converted, tmp_path):
    from model.checkpoint import save_model
    from model.convert import convert_to_hf

    _, ours = converted
    model = load_model(ours, intra_positions=8)
    with torch.no_grad():
        model.wte_intra.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))  # trained
    save_model(model.state_dict(), model.config, tmp_path / "infill")
    convert_to_hf(tmp_path / "infill", tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "What this export cannot do" in card and "plain causal path only" in card and "8 rows" in card
    hf = transformers.MptForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():  # the causal path: no prefix, index positions, intra ids 0 (row 0 is trained too)
        ours_causal = model(ids, intra_positions=torch.zeros(1, 9, dtype=torch.long))
        plain = load_model(tmp_path / "hf")(ids)
        torch.testing.assert_close(hf(ids).logits, plain, **TOL)
    assert not torch.allclose(ours_causal, plain, atol=1e-4)  # the intra rows are what the export leaves out
