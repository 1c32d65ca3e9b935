"""Text-token norm anchor: the names lists, column means, tower encoding, rescaling and the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from uniid_core import anchor as anchor_module
from uniid_core.anchor import (
    DEFAULT_NAMES_PATH,
    OFFICIAL_NAMES_PATH,
    PROJECT_NAMES_PATH,
    AnchorCache,
    AnchorTower,
    TextAnchor,
    anchor_hidden,
    column_means,
    compute_anchor,
    load_names,
    names_digest,
    names_path,
    transformers_tower,
)
from uniid_core.errors import UniIDError


@dataclass
class FakeTower:
    """Character-level tower: a word's letters are its ids; the 'encoder' is a fixed linear map."""

    token_embedding: torch.Tensor
    bos_id: int = 27
    eos_id: int = 28
    pad_id: int = 29

    def tokenize(self, name: str) -> list[int]:
        return [ord(c) - ord("a") for c in name.lower() if c.isalpha()]

    def penultimate(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(inputs_embeds.shape[1], dtype=inputs_embeds.dtype)[None, :, None]
        return inputs_embeds * 2.0 + positions


def _fake(width: int, seed: int) -> FakeTower:
    return FakeTower(torch.randn(30, width, generator=torch.Generator().manual_seed(seed)))


def test_project_names_list_is_an_option():
    names = load_names("uniid_project")
    assert names_path("uniid_project") == PROJECT_NAMES_PATH and PROJECT_NAMES_PATH.is_file()
    assert 300 <= len(names) <= 500
    assert len(set(names)) == len(names)
    assert all(name.isascii() and len(name.split()) >= 2 for name in names)
    assert names_digest(names) != names_digest(load_names())


def test_default_names_are_the_official_list(golden_dir: Path):
    official_bytes = (golden_dir / "wiki_names_v2.txt").read_bytes()
    official = official_bytes.decode("utf-8").splitlines()
    assert DEFAULT_NAMES_PATH == OFFICIAL_NAMES_PATH == names_path(None) == names_path("official")
    assert load_names() == load_names("official") == official and len(official) == 691
    shipped = OFFICIAL_NAMES_PATH.read_text(encoding="utf-8").splitlines(keepends=True)
    header = [line for line in shipped if line.startswith("#")]
    assert header and "lyuPang/UniID" in header[0], "the header must say where the list comes from"
    assert "".join(shipped[len(header) :]).encode("utf-8") == official_bytes, "names must be a byte copy"


def test_load_names_user_file(tmp_path: Path):
    path = tmp_path / "names.txt"
    path.write_text("# comment\n\nAda Lovelace\n  Alan Turing  \n", encoding="utf-8")
    assert load_names(path) == ["Ada Lovelace", "Alan Turing"]
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(UniIDError, match="holds no names"):
        load_names(tmp_path / "empty.txt")
    with pytest.raises(UniIDError, match="not found.*official, uniid_project"):
        load_names(tmp_path / "missing.txt")


def test_column_means_average_only_names_that_have_the_column():
    tower = _fake(6, 0)
    table = tower.token_embedding
    means = column_means(tower, ["ab", "cde", "f"], 3)
    torch.testing.assert_close(means[0], (table[0] + table[2] + table[5]) / 3)
    torch.testing.assert_close(means[1], (table[1] + table[3]) / 2)
    torch.testing.assert_close(means[2], table[4])
    with pytest.raises(UniIDError, match="column 3"):
        column_means(tower, ["ab", "c"], 3)


def test_anchor_hidden_sequence_layout():
    tower = _fake(6, 1)
    table = tower.token_embedding
    means = torch.randn(3, 6)
    hidden = anchor_hidden(tower, means)
    positions = torch.arange(1, 4, dtype=torch.float32)[:, None]
    torch.testing.assert_close(hidden, means * 2.0 + positions)
    seen = {}

    class Recording(FakeTower):
        def penultimate(self, inputs_embeds):
            seen["x"] = inputs_embeds
            return inputs_embeds

    anchor_hidden(Recording(table), means)
    x = seen["x"][0]
    assert x.shape == (77, 6)
    torch.testing.assert_close(x[0], table[27])
    torch.testing.assert_close(x[1:4], means)
    torch.testing.assert_close(x[4], table[28])
    torch.testing.assert_close(x[5:], table[29].expand(72, -1))


def test_compute_anchor_and_rescale():
    towers = [_fake(6, 2), _fake(10, 3)]
    names = ["abc def", "ghij", "kl"]
    anchor = compute_anchor(towers, names, 3)
    assert anchor.widths == (6, 10) and anchor.num_tokens == 3
    for tower, norms in zip(towers, (anchor.norms_l, anchor.norms_g), strict=True):
        expected = anchor_hidden(tower, column_means(tower, names, 3)).norm(dim=-1)
        torch.testing.assert_close(norms, expected)
    tokens = torch.randn(2, 3, 16)
    out = anchor.rescale(tokens)
    torch.testing.assert_close(out[..., :6].norm(dim=-1), anchor.norms_l.expand(2, -1))
    torch.testing.assert_close(out[..., 6:].norm(dim=-1), anchor.norms_g.expand(2, -1))
    cosine = torch.nn.functional.cosine_similarity(out[..., :6], tokens[..., :6], dim=-1)
    torch.testing.assert_close(cosine, torch.ones(2, 3))
    with pytest.raises(UniIDError, match="covers 3 tokens"):
        anchor.rescale(torch.randn(1, 4, 16))
    with pytest.raises(UniIDError, match="wide"):
        anchor.rescale(torch.randn(1, 3, 2048))
    with pytest.raises(UniIDError, match="two text towers"):
        compute_anchor(towers[:1], names, 3)


def test_rescale_keeps_dtype_and_default_sdxl_widths():
    anchor = TextAnchor(norms_l=torch.tensor([1.0, 2.0]), norms_g=torch.tensor([3.0, 4.0]))
    out = anchor.rescale(torch.randn(1, 2, 2048, dtype=torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[0, :, 768:].norm(dim=-1), torch.tensor([3.0, 4.0], dtype=torch.float64))


def test_anchor_cache_memoises_per_weights(monkeypatch):
    towers = [_fake(6, 4), _fake(10, 5)]
    calls = []
    real = anchor_module.compute_anchor

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(anchor_module, "compute_anchor", counting)
    cache = AnchorCache()
    first = cache.get(towers, ["abc de"], 3)
    assert cache.get(towers, ["abc de"], 3) is first and len(calls) == 1
    cache.get(towers, ["abc de", "fgh"], 3)
    assert len(calls) == 2
    towers[0].token_embedding.mul_(2.0)
    changed = cache.get(towers, ["abc de"], 3)
    assert len(calls) == 3 and not torch.equal(changed.norms_l, first.norms_l)
    cache.get(towers, ["abc de"], 3, fingerprint="explicit")
    cache.get(towers, ["abc de"], 3, fingerprint="explicit")
    assert len(calls) == 4 and len(cache) == 4
    cache.clear()
    assert len(cache) == 0


@pytest.fixture(scope="module")
def clip_pair(golden_dir: Path):
    """Tiny random transformers CLIP towers with the real SDXL tokenizers from the golden folder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    base = golden_dir / "sdxl_tiny"
    common = dict(vocab_size=49408, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=32, hidden_act="quick_gelu", **common)).eval()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, projection_dim=48, **common)).eval()
    tok1 = CLIPTokenizer.from_pretrained(base / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(base / "tokenizer_2")
    return (transformers_tower(te1, tok1, 49407), transformers_tower(te2, tok2, 0))


def test_transformers_tower_matches_the_text_encoder(clip_pair):
    for tower in clip_pair:
        assert isinstance(tower, AnchorTower)
        ids = tower.tokenizer(
            "a photo of Ada Lovelace", padding="max_length", max_length=77, return_tensors="pt"
        )
        ids = ids.input_ids
        assert ids[0, 0] == tower.bos_id == 49406 and tower.eos_id == 49407
        with torch.no_grad():
            expected = tower.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            got = tower.penultimate(tower.token_embedding[ids])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        plain = tower.tokenizer("Ada Lovelace").input_ids
        assert tower.tokenize("Ada Lovelace") == plain[1:-1]


def test_project_list_gives_a_full_anchor_on_sdxl_tokenizers(clip_pair):
    names = load_names("uniid_project")
    anchor = compute_anchor(list(clip_pair), names, 3)
    assert anchor.widths == (32, 48)
    assert torch.isfinite(anchor.norms_l).all() and torch.isfinite(anchor.norms_g).all()
    assert (anchor.norms_l > 0).all() and (anchor.norms_g > 0).all()
    long_names = [n for n in names if len(clip_pair[0].tokenize(n)) >= 3]
    assert len(long_names) > 100


@pytest.fixture(scope="module")
def golden_clip_pair(golden_dir: Path, make_weights):
    """The golden tiny SDXL text encoders (real configs and tokenizers, rule-made weights) as towers."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = golden_dir / "sdxl_tiny"
    towers = []
    for folder, cls, tokenizer, pad in (
        ("text_encoder", CLIPTextModel, "tokenizer", 49407),
        ("text_encoder_2", CLIPTextModelWithProjection, "tokenizer_2", 0),
    ):
        model = cls(CLIPTextConfig.from_pretrained(base / folder)).eval()
        spec = make_weights.load_spec(str(golden_dir / "specs" / f"{folder}.json"))
        state = make_weights.make_state_dict(spec["tensors"], int(spec["seed"]))
        own = set(model.state_dict())
        state = {k if k in own else k.removeprefix("text_model."): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
        towers.append(transformers_tower(model, CLIPTokenizer.from_pretrained(base / tokenizer), pad))
    return towers


def test_default_anchor_equals_the_official_anchor(golden_clip_pair, golden):
    """With no names given, the anchor is the official script's (golden celeb_* tensors)."""
    names = load_names()
    for k, tower in enumerate(golden_clip_pair, start=1):
        means = column_means(tower, names, 3)
        torch.testing.assert_close(means, golden[f"celeb_col_mean_{k}"], atol=5e-5, rtol=1e-5)
        with torch.no_grad():
            hidden = anchor_hidden(tower, golden[f"celeb_col_mean_{k}"])
        torch.testing.assert_close(hidden, golden[f"celeb_anchor_{k}"], atol=5e-5, rtol=1e-5)
    anchor = compute_anchor(golden_clip_pair, names, 3)
    torch.testing.assert_close(anchor.norms_l, golden["celeb_anchor_norm_1"].flatten(), atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(anchor.norms_g, golden["celeb_anchor_norm_2"].flatten(), atol=5e-5, rtol=1e-5)
    project = compute_anchor(golden_clip_pair, load_names("uniid_project"), 3)
    assert (project.norms_l - anchor.norms_l).abs().max() > 1e-3, "the lists must give different anchors"
