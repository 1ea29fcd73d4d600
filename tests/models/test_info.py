import pytest

from segformer.info import main, model_info


def test_b0_matches_the_paper():
    info = model_info("b0", (512, 512), num_classes=150, decoder_dim=None)
    params, paper_head, fast_head = info["total"]
    assert round(params, 1) == 3.8
    assert round(paper_head, 1) == 8.4  # paper Table 1a: 8.4 G at 512 x 512 (MACs)
    assert fast_head < paper_head / 2  # the fused head skips the 4E -> E conv at H/4
    assert info["encoder"][1] == info["encoder"][2]


def test_cli_prints_a_table(capsys):
    main(["variant=b2", "size=512x512", "num_classes=150"])
    out = capsys.readouterr().out
    assert "SegFormer-B2 at 512x512, 150 classes" in out
    assert "27.46" in out and "62.3" in out  # params (M), paper-head GMACs (paper: 62.4)
    # the variant table's facts
    assert "mit_b2.pth" in out and "nvidia/mit-b2" in out and "768" in out


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit, match="bad argument 'depth=3'"):
        main(["depth=3"])
    with pytest.raises(SystemExit, match="size='big'"):
        main(["size=big"])
    with pytest.raises(SystemExit, match="num_classes='many'"):
        main(["num_classes=many"])
    with pytest.raises(SystemExit, match="variant='b9'; expected one of b0, b1"):
        main(["variant=b9"])
