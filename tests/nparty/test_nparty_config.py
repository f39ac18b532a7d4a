"""The N-party keys of the leader YAML (followers, party, aggregate, secure) and of the run file."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitlink.config import FLYamlData, YamlConfigError
from splitlink.runtime.multiparty import aggregations, followers_of

HEAD = """role: leader
followers: [follower1, follower2, follower3]
model:
  train_net:
    name: top
    inputs:
      - name: leader_emb
        source: local
"""
TAIL = """      - name: label
        source: local
    outputs:
      - name: loss
opts:
  - type: SGD
    grads:
      - inputs:
          - name: leader_emb
        output:
          name: loss
    hyper_parameters:
      lr: 0.1
"""


def load(tmp_path: Path, inputs: str, head: str = HEAD) -> FLYamlData:
    p = tmp_path / "leader_top.yaml"
    p.write_text(head + inputs + TAIL)
    return FLYamlData(p)


def test_a_valid_n_party_yaml(tmp_path: Path) -> None:
    y = load(
        tmp_path,
        """      - name: deep
        source: remote
        party: [follower1, follower2, follower3]
        aggregate: sum
        secure: true
        frac_bits: 20
      - name: extra
        source: remote
        party: follower2
""",
    )
    assert followers_of(y) == ["follower1", "follower2", "follower3"]
    aggs = aggregations(y)
    assert aggs["deep"].kind == "sum" and aggs["deep"].secure and aggs["deep"].frac_bits == 20
    assert aggs["extra"].parties == ("follower2",) and aggs["extra"].kind == "single"


@pytest.mark.parametrize(
    ("inputs", "head", "expected"),
    [
        (
            """      - name: deep
        source: remote
        party: [follower1, follower9]
        aggregate: sum
      - name: x
        source: remote
        party: follower3
""",
            HEAD,
            [
                "line 11: model.train_net.inputs[1].party[1]: 'follower9' is not a follower "
                "(followers: follower1, follower2, follower3)",
                "followers[1]: follower 'follower2' sends nothing",
            ],
        ),
        (
            """      - name: deep
        source: remote
        party: [follower1, follower2, follower3]
        aggregate: sum
""",
            HEAD.replace("follower3]", "follower1]"),
            ["line 2: followers[2]: follower 'follower1' is listed twice (also followers[0])"],
        ),
        (
            """      - name: deep
        source: remote
        party: [follower1, follower2, follower1, follower3]
        aggregate: concat
        secure: true
""",
            HEAD,
            [
                "party[2]: follower 'follower1' is listed twice (also party[0])",
                "inputs[1].secure: secure aggregation masks a sum: aggregate must be sum or mean",
            ],
        ),
        (
            """      - name: deep
        source: remote
        party: [follower1, follower2, follower3]
""",
            HEAD,
            ["line 9: model.train_net.inputs[1]: missing: aggregate (concat, sum or mean) for 'deep', sent by 3 followers"],
        ),
        (
            """      - name: deep
        source: remote
      - name: w
        source: local
        party: follower1
""",
            HEAD,
            [
                "model.train_net.inputs[1]: missing: party, the follower that sends 'deep' "
                "(one of: follower1, follower2, follower3)",
                "model.train_net.inputs[2].party: applies to inputs with source: remote only ('w' is local)",
            ],
        ),
        (
            """      - name: deep
        source: remote
        party: follower1
        aggregate: sum
        secure: true
""",
            HEAD.replace(", follower2, follower3", ""),
            [
                "inputs[1].aggregate: combines the tensors of several followers",
                "inputs[1].secure: secure aggregation needs at least 2 followers",
            ],
        ),
        (
            """      - name: deep
        source: remote
        party: follower1
""",
            HEAD.replace("role: leader\nfollowers: [follower1, follower2, follower3]\n", "role: follower\n"),
            ["party: names a follower, but the YAML lists no followers"],
        ),
        (
            """      - name: deep
        source: remote
        party: [follower1, follower2, follower3]
        aggregate: max
""",
            HEAD,
            ["aggregate", "'concat', 'sum' or 'mean'"],
        ),
    ],
)
def test_mistakes_are_reported_with_line_and_key(tmp_path: Path, inputs: str, head: str, expected: list[str]) -> None:
    with pytest.raises(YamlConfigError) as e:
        load(tmp_path, inputs, head)
    msg = str(e.value)
    assert "leader_top.yaml" in msg
    for part in expected:
        assert part in msg, msg


def test_followers_only_in_a_leader_yaml(tmp_path: Path) -> None:
    head = HEAD.replace("role: leader", "role: follower")
    with pytest.raises(YamlConfigError, match=r"line 2: followers: only the leader lists followers"):
        load(
            tmp_path,
            """      - name: deep
        source: remote
        party: [follower1, follower2, follower3]
        aggregate: mean
""",
            head,
        )


def test_run_file_peers(tmp_path: Path) -> None:
    import yaml

    from splitlink.runtime.run_config import load_run_config

    base = {
        "scenario": "wide_deep_nparty",
        "party": "follower",
        "name": "follower2",
        "address": "127.0.0.1:7002",
        "enable_ssl": False,
        "data": "d.npz",
        "peers": {"leader": "127.0.0.1:7000", "follower1": "127.0.0.1:7001", "follower3": "127.0.0.1:7003"},
    }
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(base))
    cfg = load_run_config(f)
    assert cfg.name == "follower2" and set(cfg.peers or {}) == {"leader", "follower1", "follower3"}
    bad = dict(base, peers={"follower1": "127.0.0.1:7002", "follower2": "x"}, peer_address="127.0.0.1:1")
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(YamlConfigError) as e:
        load_run_config(f)
    msg = str(e.value)
    for part in (
        "give peers or peer_address, not both",
        "this party ('follower2') is not its own peer",
        "not host:port: 'x'",
        "a follower's peers must include the leader",
    ):
        assert part in msg, msg
    f.write_text(yaml.safe_dump({k: v for k, v in base.items() if k != "peers"}))
    with pytest.raises(YamlConfigError, match="peer_address: missing"):
        load_run_config(f)


def test_the_shipped_example_yaml_loads() -> None:
    p = Path(__file__).resolve().parents[2] / "examples/splitnn_criteo/yaml_files/nparty/leader_top_3followers_secure_sum.yaml"
    aggs = aggregations(FLYamlData(p))
    assert {a.kind for a in aggs.values()} == {"sum"} and all(a.secure and len(a.parties) == 3 for a in aggs.values())
