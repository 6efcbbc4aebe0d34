import copy

import pytest
import torch
from torch import nn

import dropkit
from dropkit import Dropout, DropPath, describe, find_sites, register_site, unregister_site
from tests import lookalikes


def names(sites) -> list[str]:
    return [s.name for s in sites]


def test_every_torch_dropout_class_is_found() -> None:
    classes = [
        nn.Dropout,
        nn.Dropout1d,
        nn.Dropout2d,
        nn.Dropout3d,
        nn.AlphaDropout,
        nn.FeatureAlphaDropout,
    ]
    model = nn.Sequential(*(cls(0.1 * (i + 1)) for i, cls in enumerate(classes)))
    sites = find_sites(model)
    assert names(sites) == [str(i) for i in range(len(classes))]
    assert all(s.kind == "dropout" and s.controllable and s.attr == "p" for s in sites)
    assert [s.p for s in sites] == pytest.approx([0.1 * (i + 1) for i in range(len(classes))])


def test_transformer_layer_finds_modules_and_attention_float() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True)
    sites = find_sites(layer)
    assert sorted(names(sites)) == ["dropout", "dropout1", "dropout2", "self_attn:dropout"]
    attn = next(s for s in sites if s.name == "self_attn:dropout")
    assert attn.module is layer.self_attn and attn.p == 0.2
    attn.set_p(0.05)
    assert layer.self_attn.dropout == 0.05 and attn.p == 0.05


def test_hf_style_float_attributes_are_found() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_dropout, self.dropout_prob = 0.1, 0.0
            self.num_heads = 2  # an int, not a rate
            self.is_causal = True  # a bool, not a rate

    sites = find_sites(nn.ModuleDict({"attn": Attention()}))
    assert names(sites) == ["attn:attention_dropout", "attn:dropout_prob"]
    assert [s.p for s in sites] == [0.1, 0.0]


def test_drop_path_lookalikes_and_our_own() -> None:
    model = nn.ModuleDict(
        {
            "timm": lookalikes.DropPath(0.1),
            "tv": lookalikes.StochasticDepth(0.2),
            "hf": lookalikes.ViTDropPath(0.3),
            "ours": DropPath(0.4),
            "ours_drop": Dropout(0.5),
        }
    )
    by_name = {s.name: s for s in find_sites(model)}
    assert {n: (s.kind, s.attr, s.p) for n, s in by_name.items()} == {
        "timm": ("drop_path", "drop_prob", 0.1),
        "tv": ("drop_path", "p", 0.2),
        "hf": ("drop_path", "drop_prob", 0.3),
        "ours": ("drop_path", "drop_prob", 0.4),
        "ours_drop": ("dropout", "p", 0.5),
    }


def test_identity_placeholders_are_reported_not_controllable() -> None:
    model = lookalikes.TimmViT(depth=3, drop_path_rate=0.0)
    sites = find_sites(model)
    placeholders = [s for s in sites if not s.controllable]
    assert names(placeholders) == [f"blocks.{i}.drop_path{j}" for i in range(3) for j in (1, 2)]
    assert all(s.kind == "drop_path" and "replace_placeholders" in s.note for s in placeholders)
    assert all(s.p == 0.0 for s in placeholders)
    with pytest.raises(RuntimeError, match="not controllable"):
        placeholders[0].set_p(0.1)
    # an Identity whose name says nothing about dropout is not a site
    assert find_sites(nn.Sequential(nn.Identity())) == []


def test_replace_placeholders_keeps_outputs_and_makes_sites_schedulable() -> None:
    model = lookalikes.TimmViT(depth=3, drop_path_rate=0.0).eval()
    x = torch.randn(2, 5, 8)
    before = model(x)
    replaced = dropkit.replace_placeholders(model)
    assert len(replaced) == 6
    assert torch.equal(model(x), before)
    assert all(s.controllable for s in find_sites(model))


def test_unknown_shape_matching_a_rule_is_explained() -> None:
    class DropPath(nn.Module):  # same name as timm's, but the rate lives elsewhere
        def __init__(self) -> None:
            super().__init__()
            self.rate = 0.1

    (site,) = find_sites(nn.Sequential(DropPath()))
    assert not site.controllable and "register_site" in site.note
    register_site(DropPath, attr="rate", kind="drop_path")
    (site,) = find_sites(nn.Sequential(DropPath()))
    assert site.controllable and site.p == 0.1


def test_register_site_user_type_precedence_and_unregister() -> None:
    class Noise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sigma = 0.3

    class MyDropout(nn.Dropout):
        def __init__(self) -> None:
            super().__init__(0.2)
            self.rate = 0.7

    model = nn.Sequential(Noise(), MyDropout())
    assert names(find_sites(model)) == ["1"]
    register_site(Noise, attr="sigma", kind="dropout")
    register_site(MyDropout, attr="rate", kind="drop_path")
    sites = find_sites(model)
    assert [(s.name, s.kind, s.p) for s in sites] == [
        ("0", "dropout", 0.3),
        ("1", "drop_path", 0.7),
    ]
    unregister_site(MyDropout)
    assert find_sites(model)[1].attr == "p"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((nn.Dropout(), "p", "dropout"), TypeError),
        ((nn.Dropout, "not an attr", "dropout"), ValueError),
        ((nn.Dropout, "p", "noise"), ValueError),
    ],
)
def test_register_site_bad_input(args, error) -> None:
    with pytest.raises(error):
        register_site(*args)


def test_wrappers_are_unwrapped(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    assert names(find_sites(torch.compile(model))) == ["1"]
    assert names(find_sites(nn.DataParallel(model))) == ["1"]
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert names(find_sites(torch.compile(ddp))) == ["1"]
    finally:
        torch.distributed.destroy_process_group()
    with pytest.raises(TypeError, match=r"nn\.Module"):
        find_sites("model")


def test_describe_table() -> None:
    model = lookalikes.TimmViT(depth=2, drop_path_rate=0.2)
    text = describe(model)
    lines = text.splitlines()
    assert lines[0] == "TimmViT: 7 sites (3 dropout, 4 drop_path), 2 not controllable"
    assert lines[1].split() == ["site", "kind", "p", "controllable", "note"]
    for site in find_sites(model):
        row = next(line for line in lines if line.startswith(site.name + " "))
        assert row.split()[:4] == [
            site.name,
            site.kind,
            f"{site.p:.4g}",
            "yes" if site.controllable else "NO",
        ]
    assert "no dropout sites" in describe(nn.Linear(2, 2))


# --- real Hugging Face models, built offline from configs --------------------------------------


def test_tiny_bert_every_site_found() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.2,
    )
    model = transformers.BertForSequenceClassification(config)
    found = {s.name: s for s in find_sites(model)}
    # independent count: every nn.Dropout module plus every float rate an attention keeps
    modules = {n for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    floats = {
        f"{n}:{a}"
        for n, m in model.named_modules()
        for a, v in vars(m).items()
        if isinstance(v, float) and "drop" in a
    }
    assert set(found) == modules | floats
    assert len(modules) == 1 + 3 * 2 + 1  # embeddings, 3 per layer, classifier head
    attn = [s for n, s in found.items() if ".attention.self" in n]
    assert attn and all(s.p == 0.2 for s in attn)
    assert all(s.controllable and s.kind == "dropout" for s in found.values())


def test_tiny_llama_attention_float_found_and_effective() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        attention_dropout=0.3,
    )
    model = transformers.LlamaForCausalLM(config).train()
    sites = find_sites(model)
    assert names(sites) == [f"model.layers.{i}.self_attn:attention_dropout" for i in range(2)]
    assert all(s.p == 0.3 for s in sites)
    ids = torch.randint(0, 64, (2, 6))

    def two_outputs_differ() -> bool:
        return not torch.equal(model(ids).logits, model(ids).logits)

    assert two_outputs_differ()  # attention dropout active in train mode
    scheduler = dropkit.DropoutScheduler(model, total_steps=1, dropout=0.0)
    assert not two_outputs_differ()  # the written float really switched it off
    scheduler.remove()
    assert all(s.p == 0.3 for s in find_sites(model))


# --- real timm / torchvision, where they can be imported -----------------------------------------


def test_real_timm_vit() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.1)
    drop_paths = [s for s in find_sites(model) if s.kind == "drop_path"]
    depth = len(model.blocks)
    assert len(drop_paths) == 2 * depth
    assert [s.controllable for s in drop_paths[:2]] == [False, False]  # block 0 built at rate 0
    assert all(s.controllable for s in drop_paths[2:])
    assert drop_paths[-1].p == pytest.approx(0.1)


def test_real_torchvision_swin() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.swin_t(weights=None, stochastic_depth_prob=0.2)
    drop_paths = [s for s in find_sites(model) if s.kind == "drop_path"]
    n_blocks = sum(isinstance(m, torchvision.ops.StochasticDepth) for m in model.modules())
    assert len(drop_paths) == n_blocks > 0
    assert all(s.controllable and s.attr == "p" for s in drop_paths)


def test_register_site_refuses_a_non_string_attr_with_type_error() -> None:
    class Odd(nn.Module):
        pass

    with pytest.raises(TypeError, match="attr must be the name"):
        dropkit.register_site(Odd, attr=3, kind="dropout")
    with pytest.raises(ValueError, match="not an attribute name"):
        dropkit.register_site(Odd, attr="not valid", kind="dropout")


def test_describe_counts_one_site_in_the_singular() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1))
    assert dropkit.describe(model).splitlines()[0] == (
        "Sequential: 1 site (1 dropout, 0 drop_path), 0 not controllable"
    )


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))  # fmt: skip


def test_add_dropout_sites_adds_schedulable_sites_that_change_nothing_at_rate_0() -> None:
    model, reference = _mlp(), _mlp()
    keys = list(model.state_dict())
    added = dropkit.add_dropout_sites(model)
    assert added == ["0.dropkit_dropout", "2.dropkit_dropout"]  # not the output layer
    assert [s.name for s in dropkit.find_sites(model)] == added
    assert list(model.state_dict()) == keys  # checkpoints load as before
    x = torch.randn(32, 6)
    for mode in (True, False):
        model.train(mode), reference.train(mode)
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    # a schedule reaches them: in training the hidden activations are dropped (by hand here)
    scheduler = dropkit.DropoutScheduler(model, 10, dropout=0.5)
    assert scheduler.get_last_p() == {"dropout": 0.5}
    model.train()
    torch.manual_seed(1)
    hidden = model[1](model[0](x))
    assert (hidden == 0).float().mean() > 0.4  # ReLU zeros too, but dropout doubles the rest
    model.eval()
    torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)
    assert copy.deepcopy(model)(x).shape == (32, 3)  # hooks survive a copy (populations)


def test_add_dropout_sites_at_named_modules_and_its_errors() -> None:
    model = _mlp()
    assert dropkit.add_dropout_sites(model, names=["2"]) == ["2.dropkit_dropout"]
    with pytest.raises(ValueError, match="already have an added dropout site"):
        dropkit.add_dropout_sites(model, names=["2"])
    with pytest.raises(ValueError, match="are not modules"):
        dropkit.add_dropout_sites(model, names=["nope"])
    with pytest.raises(ValueError, match="besides its output layer"):
        dropkit.add_dropout_sites(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_the_no_sites_message_names_the_fix() -> None:
    message = dropkit.describe(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    assert "dropkit.add_dropout_sites(model)" in message
    with pytest.raises(ValueError, match="add_dropout_sites"):
        dropkit.DropoutScheduler(nn.Sequential(nn.Linear(4, 2)), 10, dropout=0.1)
