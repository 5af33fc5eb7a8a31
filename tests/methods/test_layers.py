import pytest

from adaptformer import AdaptFormerError
from adaptformer.methods.layers import resolve_layers


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", [0, 1, 2, 3]),
        ("top:1", [3]),
        ("top:3", [1, 2, 3]),
        ("bottom:2", [0, 1]),
        ("0,2", [0, 2]),
        ("-1", [3]),
        ([3, 0, 3], [0, 3]),
        ((1,), [1]),
    ],
)
def test_layer_specs(spec, expected):
    assert resolve_layers(spec, 4) == expected


@pytest.mark.parametrize("spec", ["top:0", "top:5", "bottom:x", "7", "a,b", "", []])
def test_bad_layer_specs_fail_clearly(spec):
    with pytest.raises(AdaptFormerError, match="layers"):
        resolve_layers(spec, 4)
