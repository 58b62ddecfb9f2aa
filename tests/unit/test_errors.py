from wxmgw import errors
from wxmgw.errors import Code


def test_codes_are_distinct_and_documented():
    assert len({c.value for c in Code}) == len(Code)
    readme = (__import__("pathlib").Path(__file__).parents[2] / "README.md").read_text()
    for code in Code:
        assert f"| {code.value} |" in readme, code


def test_each_error_maps_to_its_code():
    assert errors.InvalidArgument.code is Code.INVALID_ARGUMENT
    assert errors.UnknownLeg.code is Code.UNKNOWN_LEG
    assert errors.Conflict.code is Code.CONFLICT
    assert errors.NoFreePort.code is Code.NO_FREE_PORT
    assert errors.NoLocalSource.code is Code.NO_LOCAL_SOURCE
    assert errors.WxmgwError.code is Code.INTERNAL
    assert issubclass(errors.ParseError, ValueError)
