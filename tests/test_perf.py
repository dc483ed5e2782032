"""The benchmark command runs and its arithmetic is right; how fast anything is is not tested."""
import json
import math

import pytest
import torch
from torch._dynamo.utils import counters

import bench
from bench import perf
from bench.config import load_experiment
from bench.data import TrainBatches, build_source
from bench.model import flex_block_mask
from bench.packing import PAD, ROW_BUCKETS, PackedBatch, bucket, pack, pad_to_buckets
from bench.plan import make_plan
from bench.posembed import list_variants, variant_class

PATCH = 8
BIAS = [v for v in list_variants() if variant_class(v).kind == "bias"]


def images_for(grids, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h * PATCH, w * PATCH, generator=g) for h, w in grids]


def tiny_model(attention="sdpa", variant="rope_mixed"):
    torch.manual_seed(0)
    return bench.build_model(variant, 5, PATCH, 32, 2, 2, attention=attention).eval()


def test_command_runs_on_a_tiny_batch_and_writes_every_setup(tmp_path, capsys):
    out = tmp_path / "perf.json"
    assert perf.main(["--images", "6", "--dim", "32", "--depth", "1", "--heads", "2", "--steps", "1",
                      "--warmup", "0", "--skip-data", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["setup"]: row for row in result["setups"]}
    assert list(rows) == ["padded", "padded_hw", "packed256", "packed512", "grouped"]  # flex is CUDA-only
    assert rows["grouped"]["padding_fraction"] == 0 and rows["padded"]["train_speedup"] == 1
    # Pixel padding: every row is the largest H by the largest W, in patches.
    images, _ = perf.standard_batch(6, 16, seed=0)
    hw = max(i.shape[1] for i in images) // 16 * (max(i.shape[2] for i in images) // 16)
    longest = max(i.shape[1] * i.shape[2] for i in images) // 16 ** 2
    assert rows["padded_hw"]["shape"] == f"6x{hw}" and rows["padded"]["shape"] == f"6x{longest}" and hw > longest
    for row in rows.values():
        assert row["train_s"] > 0 and row["eval_s"] > 0 and row["real_tokens"] == result["batch"]["real_tokens"]
        assert math.isfinite(row["train_speedup"]) and row["mfu"] is None  # no MFU on CPU
    assert set(result["ratios"]) >= {"packed256_train_speedup", "packed256_train_speedup_over_padded_hw",
                                      "packed256_over_grouped_train_time",
                                      "packed256_mask_and_pack_share", "data_pipeline_share"}
    printed = capsys.readouterr().out
    assert "| packed256 |" in printed and "python -m bench.perf --images 6" in printed


def test_the_experiments_train_step_is_timed_in_useful_flops_against_a_measured_matmul_rate(make_config, tmp_path,
                                                                                              capsys):
    out = tmp_path / "perf.json"
    assert perf.main(["--images", "2", "--dim", "16", "--depth", "1", "--heads", "2", "--steps", "1", "--warmup", "0",
                      "--experiment", str(make_config()), "--json", str(out)]) == 0
    step = json.loads(out.read_text())["experiment_step"]
    assert step["experiment"] == "tiny" and step["variant"] == "nope"
    assert step["data_s"] > 0 and step["train_s"] > 0
    assert step["share"] == pytest.approx(step["data_s"] / step["train_s"], rel=0.5)
    # TINY: dim 16, depth 1, rows of up to 64 tokens; 3x the forward's useful FLOPs, per second.
    assert step["useful_gflops"] == pytest.approx(step["useful_gflop"] / step["train_s"], rel=0.5)
    assert step["matmul_shape"] == [128, 16, 64] and step["matmul_gflops_1024"] > 0
    assert step["share_of_matmul_rate"] == pytest.approx(step["useful_gflops"] / step["matmul_gflops_1024"])
    printed = capsys.readouterr().out
    assert "tiny's train step (nope)" in printed and "of this machine's measured fp32 matmul rate" in printed
    assert "target" not in printed   # figures only, no internal goals


def test_bad_flags_are_one_line_errors(capsys):
    assert perf.main(["--images", "0", "--skip-data"]) == 2
    assert perf.main(["--patch", "24", "--skip-data"]) == 2
    assert capsys.readouterr().err.count("error:") == 2


def test_standard_batch_is_seeded_and_packs_into_the_fewest_rows():
    images, labels = perf.standard_batch(64, 16, seed=0)
    again, _ = perf.standard_batch(64, 16, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(images, again)) and labels.shape == (64,)
    assert {side for image in images for side in image.shape[1:]} <= set(perf.SIDES)
    batch = pack(images, 16, 256)
    assert batch.num_rows == math.ceil(batch.num_tokens / 256)
    groups = perf.grouped(images, labels, 16)
    assert sum(b.num_images for b, _ in groups) == 64 and not any(b.needs_mask for b, _ in groups)


def test_buckets_and_bucket_padding_change_no_output():
    assert [bucket(n, ROW_BUCKETS) for n in (1, 4, 5, 27, 33, 256, 257)] == [4, 4, 8, 28, 40, 256, 512]
    assert [bucket(n, (128,)) for n in (1, 128, 129, 300)] == [128, 128, 256, 384]
    model = tiny_model()
    batch = pack(images_for([(2, 3), (4, 4), (1, 7), (5, 2)]), PATCH, 40)
    padded = pad_to_buckets(batch)
    assert (padded.num_rows, padded.row_len) == (4, 128) and padded.num_dropped == batch.num_dropped
    assert (padded.image_ids[batch.num_rows:] == PAD).all() and (padded.image_ids[:, batch.row_len:] == PAD).all()
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(batch), atol=1e-5, rtol=0)
    assert pad_to_buckets(padded) is padded


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("attention", ["sdpa", "flex"])
@pytest.mark.parametrize("variant", ["rope_mixed", *BIAS])   # a bias's table is as wide as the batch's grids need
def test_compiled_encoder_never_recompiles_within_a_bucket(attention, variant):
    # The eager backend traces and guards exactly like inductor, in a fraction of the time.
    model, reference = tiny_model(attention, variant), tiny_model(variant=variant)
    model.compile_encoder(backend="eager", dynamic=False)
    first = pad_to_buckets(pack(images_for([(2, 3), (4, 4), (1, 7)]), PATCH, 64))
    second = pad_to_buckets(pack(images_for([(5, 5), (3, 2), (2, 2), (1, 1)], seed=2), PATCH, 64))
    assert first.image_ids.shape == second.image_ids.shape and not torch.equal(first.image_ids, second.image_ids)
    with torch.no_grad():
        torch.testing.assert_close(model(first), reference(first), atol=1e-5, rtol=0)
        graphs = counters["stats"]["unique_graphs"]
        torch.testing.assert_close(model(second), reference(second), atol=1e-5, rtol=0)
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_forward_on_cpu_matches_sdpa():
    images = images_for([(2, 3), (4, 4), (1, 7), (5, 2), (3, 17), (1, 1)])
    flex, sdpa = tiny_model("flex"), tiny_model()
    with torch.no_grad():
        torch.testing.assert_close(flex(images, max_seq_len=64), sdpa(images, max_seq_len=64), atol=1e-5, rtol=0)


def test_attention_pairs_useful_dense_and_flex_tiles():
    ids = torch.full((2, 300), PAD)
    ids[0, :100], ids[0, 100:250], ids[1, :130] = 0, 1, 2
    batch = PackedBatch(torch.zeros(2, 300, 3), ids, torch.zeros(2, 300, 2, dtype=torch.long),
                        torch.tensor([[10, 10], [10, 15], [10, 13]]))
    assert perf.attention_pairs(batch, "useful") == 100 ** 2 + 150 ** 2 + 130 ** 2
    assert perf.attention_pairs(batch, "dense") == 2 * 300 ** 2
    # Each row's 3 x 3 tiles: all but (0, 2) and (2, 0) hold a pair (row 0: image 1 spans tiles
    # 0-1, padding tiles 1-2; row 1: image 2 spans tiles 0-1, padding tiles 1-2).
    assert perf.attention_pairs(batch, "blocks") == 2 * 7 * 128 ** 2
    mask = flex_block_mask(ids)
    tiles = int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())
    assert tiles * 128 ** 2 == perf.attention_pairs(batch, "blocks")


def test_flops_and_mfu_arithmetic():
    model = bench.build_model("nope", 10, patch_size=4, dim=8, depth=2, heads=2)
    batch = pack([torch.zeros(3, 4, 12), torch.zeros(3, 8, 8)], 4, 8)  # 3 + 4 tokens in one row of 7
    # per token: patch 3*4*4*8 + per block (qkv 8*24 + proj 8*8 + mlp 2*8*32) = 384 + 2 * 768
    per_token = 384 + 2 * 768
    useful = 2 * per_token * 7 + 2 * 4 * 8 * (3 ** 2 + 4 ** 2) + 2 * 8 * 10 * 2
    assert perf.forward_flops(model, [(batch, None)], "useful") == useful
    assert perf.forward_flops(model, [(batch, None)], "dense") == useful + 2 * 4 * 8 * (49 - 25)
    assert perf.peak_tflops("NVIDIA H100 80GB HBM3") == 989 and perf.peak_tflops("NVIDIA H100 PCIe") == 756
    assert perf.peak_tflops("NVIDIA L40S") == 362 and perf.peak_tflops("Some CPU") is None


def test_variants_mode_times_each_variant_against_the_first_on_both_batches(make_config, tmp_path, capsys):
    out = tmp_path / "variants.json"
    assert perf.main(["--variants", "rope_axial,swin_rpb", "--images", "3", "--dim", "16", "--depth", "1", "--heads",
                      "2", "--steps", "1", "--warmup", "0", "--experiment", str(make_config()),
                      "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["reference"] == "rope_axial"
    standard, experiment = result["benches"]
    assert standard["bench"] == "standard batch" and experiment["bench"] == "tiny's training batch"
    assert experiment["model"]["dim"] == 16 and experiment["model"]["patch_size"] == 4   # the experiment's size
    for bench in result["benches"]:
        rows = {row["variant"]: row for row in bench["variants"]}
        assert list(rows) == ["rope_axial", "swin_rpb"] and rows["rope_axial"]["train_ratio"] == 1
        assert rows["rope_axial"]["train_mask_bytes"] is None and rows["swin_rpb"]["train_mask_bytes"] > 0
        assert all(row["train_s"] > 0 and row["eval_s"] > 0 for row in rows.values())
    printed = capsys.readouterr().out
    assert "| swin_rpb |" in printed and "train / rope_axial" in printed
    assert perf.main(["--variants", "rope_axial,nonsense", "--skip-data"]) == 2
    assert "unknown nonsense" in capsys.readouterr().err


def test_floor_counts_an_experiments_flops_and_prices_them_at_measured_rates(make_config, tmp_path, capsys,
                                                                             monkeypatch):
    # Two eval sizes whose FLOPs are known exactly: 16 x 16 px (4 x 4 patches: the 24 test images fill
    # 6 rows of 64) and 48 x 48 px (12 x 12 patches, longer than a row: a row each, no padding).
    config = make_config(**{"sides: [8, 16, 24, 48], aspects: [0.5, 1.0, 2.0]": "sides: [16, 48], aspects: [1.0]"})
    out = tmp_path / "floor.json"
    monkeypatch.setattr(perf, "FLOOR_SAMPLE", 30)   # every training step counted, not a sample
    assert perf.main(["--floor", "--experiment", str(config), "--json", str(out)]) == 0
    floor = json.loads(out.read_text())
    assert floor["experiment"] == "tiny" and floor["cells"] == 4   # 2 variants x 2 seeds
    per_token = 3 * 4 * 4 * 16 + 16 * 48 + 16 * 16 + 2 * 16 * 64   # patch embedding, qkv, proj, mlp (depth 1)
    tokens, images, cells, classes = 144, 24, 4, 9
    linear, attention = floor["eval_tflop"]
    head = 2 * 16 * classes * 2 * images   # the classifier, once per image of each size
    assert linear * 1e12 == pytest.approx(cells * (2 * per_token * (images * tokens + 6 * 64) + head))
    assert attention * 1e12 == pytest.approx(cells * 4 * 16 * (images * tokens ** 2 + 6 * 64 ** 2))
    assert floor["attention_shape"] == [1024 // tokens, 2, tokens, 8]
    # Training: 3x the forward of every step's batch (all 30 counted here), both variants and seeds.
    experiment = load_experiment(config)
    source = build_source(experiment.data, "train", "abs_position")
    model, t = bench.build_model("nope", classes, 4, 16, 1, 2), experiment.train
    expected = 0
    for cell in make_plan(experiment).cells():
        batches = TrainBatches(source, cell.variant.resolution, t.token_drop, 4, 128, 64, seed=cell.seed)
        expected += 3 * perf.forward_flops(model, [batches[i] for i in range(30)], "dense")
    train_linear, train_attention = floor["train_tflop"]
    assert (train_linear + train_attention) * 1e12 == pytest.approx(expected) and train_attention > 0
    rates = {"linear": floor["matmul_gflops"] * 1e9, "attention": floor["attention_gflops"] * 1e9}
    priced = ((train_linear + linear) / rates["linear"] + (train_attention + attention) / rates["attention"]) * 1e12
    assert floor["floor_s"] == pytest.approx(priced)
    printed = capsys.readouterr().out
    assert printed.startswith("tiny: 4 cells compute") and "with everything else free" in printed

    assert perf.main(["--floor", "--experiment", str(tmp_path / "missing.yaml")]) == 2
    assert perf.main(["--floor", "--variants", "nope,rope_axial", "--experiment", str(config)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "missing.yaml: No such file or directory" in errors[0] and "two modes" in errors[1]
