"""The checked-in generated code must match reasoner.proto (regenerate: python -m ponder.proto.generate)."""

from ponder.proto import generate, pb


def test_generated_code_matches_proto() -> None:
    assert generate.drift() == [], "run `python -m ponder.proto.generate` and commit the result"


def test_generated_code_is_importable_under_the_package_path() -> None:
    assert pb.DESCRIPTOR.package == "ponder.v1"
    assert "Reasoner" in pb.DESCRIPTOR.services_by_name
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Reasoner"].methods}
    assert methods == {"Solve", "Submit", "Watch", "Cancel", "GetResult", "ServerInfo"}
