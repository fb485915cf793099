# SPDX-License-Identifier: Apache-2.0
"""The key-free template scorer, the privacy of a host's update, the SuperNode key checks, and
`federated serve`'s checks."""

from __future__ import annotations

import hashlib
import io
import tomllib
import zipfile
from pathlib import Path

import dp_accounting
import numpy
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from dp_accounting.rdp import RdpAccountant
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import fitins_to_recorddict, recorddict_to_fitres
from flwr.server.strategy.aggregate import aggregate
from flwr.supercore.task_identity import TaskIdentity

from agent.cli import cli
from agent.config import load_config
from agent.errors import ConfigError
from agent.federated import flower_app
from agent.federated.client import TemplateClient
from agent.federated.privacy import PrivacyAccountant, PrivacySettings, clip, privatize
from agent.federated.runtime import KeyFileError, build_fab, check_private_key, load_public_key, read_private
from agent.federated.server import RecordingGrid, _weighted_metrics
from agent.federated.service import FederatedService
from agent.mlops.registry import ModelRegistry, save_model
from cache_core.models import MixtureModel, Vocabulary, make_model
from cache_core.models.template import PAIR_BUCKETS, RANK_REFRESH, SOURCE_BUCKETS, TemplateScorer, instantiate, key_template


def chain(ids: range, steps: tuple[str, ...] = ("user:{}:profile", "user:{}:orders", "cart:{}:items")) -> list[bytes]:
    return [step.replace("{}", str(i)).encode() for i in ids for step in steps]


def test_templates_mask_the_tokens_that_hold_digits() -> None:
    assert key_template(b"user:42:profile") == (b"user:{}:profile", (b"42",))
    assert key_template(b"img/2024-01/a7f3.png") == (b"img/{}-{}/{}.png", (b"2024", b"01", b"a7f3"))
    assert key_template(b"config:main") == (b"config:main", ())
    assert instantiate(b"user:{}:orders", (b"42",)) == b"user:42:orders"


def test_the_scorer_learns_transitions_over_the_same_variables() -> None:
    scorer = TemplateScorer()
    assert scorer.observe_keys(chain(range(100))) == 200
    # Successors are ranked from a snapshot of the counts, taken when a template is new (here
    # after the first transition) and every RANK_REFRESH examples after it; odd examples are
    # profile -> orders, so the snapshot at example RANK_REFRESH + 1 counts this many:
    assert scorer.predict_key(b"user:987654:profile", 2) == [(b"user:987654:orders", 0.5)]
    scorer.observe_keys(chain(range(100, 200)))
    profiles = RANK_REFRESH // 2 + 1
    assert scorer.predict_key(b"user:987654:profile", 2) == [(b"user:987654:orders", pytest.approx(profiles / (profiles + 1)))]
    # A key with no variable part is not learned from and predicts nothing.
    assert scorer.observe_keys([b"config:main", b"config:other"]) == 0
    assert scorer.predict_key(b"config:main", 2) == []


def test_fedavg_of_rates_is_the_rate_of_the_pooled_counts() -> None:
    hosts = [TemplateScorer() for _ in range(3)]
    traces = [chain(range(0, 50)), chain(range(100, 300), ("user:{}:profile", "cart:{}:items")), chain(range(500, 510))]
    pooled = TemplateScorer()
    for host, trace in zip(hosts, traces):
        host.observe_keys(trace)
        pooled.observe_keys(trace)
    averaged = aggregate([(host.rates(), host.examples) for host in hosts])
    for mine, theirs in zip(averaged, pooled.rates()):
        assert numpy.abs(mine - theirs).max() <= 1e-15
    cold = TemplateScorer()
    cold.set_shared(averaged)
    # It has seen each template once, over different variables (no transition of its own),
    # and knows what follows a profile on this fleet: items (200 of 260), orders below the floor.
    assert cold.observe_keys([b"user:7:profile", b"cart:8:items", b"user:9:orders"]) == 0
    assert cold.predict_key(b"user:7:profile", 2) == [(b"cart:7:items", pytest.approx(200 / 260, rel=1e-3))]
    with pytest.raises(ValueError, match="shapes"):
        cold.set_shared([numpy.zeros(3), numpy.zeros(SOURCE_BUCKETS)])


def test_a_cold_scorer_with_shared_rates_predicts_known_templates_at_once() -> None:
    fleet = TemplateScorer()
    fleet.observe_keys(chain(range(200)))
    cold = TemplateScorer()
    cold.set_shared(fleet.rates())
    cold.observe_keys([b"user:1:profile", b"user:1:orders", b"cart:1:items"])
    assert cold.predict_key(b"user:555:profile", 1)[0][0] == b"user:555:orders"
    alone = TemplateScorer()
    alone.observe_keys([b"user:1:profile", b"user:1:orders", b"cart:1:items"])
    assert alone.predict_key(b"user:555:profile", 1) == [(b"user:555:orders", 0.5)]


def test_the_mixture_with_the_template_expert_prefetches_unseen_keys(tmp_path: Path) -> None:
    fleet = TemplateScorer()
    fleet.observe_keys(chain(range(200)))
    scorer = TemplateScorer()
    scorer.set_shared(fleet.rates())
    vocab = Vocabulary(4096)
    model = MixtureModel(vocab, vocab.capacity, template=scorer)
    model.observe(vocab.encode_many(chain(range(1000, 1003))))
    ident = vocab.encode(b"user:31337:profile")
    model.observe(numpy.array([ident]))
    cands, scores = model.predict(numpy.array([ident]), 2)
    assert vocab.decode(int(cands[0, 0])) == b"user:31337:orders" and scores[0, 0] > 0
    assert model.predict_one(ident, 2)[0][0] == int(cands[0, 0])
    model.save(tmp_path / "m.npz")
    other = MixtureModel(vocab, vocab.capacity, template=TemplateScorer())
    other.load(tmp_path / "m.npz")
    assert numpy.array_equal(other.experts[3].scorer.shared_pair, scorer.shared_pair)  # type: ignore[attr-defined]


def test_clip_scales_down_only_a_longer_update() -> None:
    short, norm = clip([numpy.array([0.3, 0.4])], 1.0)
    assert norm == pytest.approx(0.5) and numpy.allclose(short[0], [0.3, 0.4])
    long, norm = clip([numpy.array([3.0, 4.0]), numpy.array([0.0])], 1.0)
    assert norm == pytest.approx(5.0) and numpy.allclose(long[0], [0.6, 0.8])


def test_privatize_clips_the_update_around_the_global_parameters_and_adds_the_noise() -> None:
    local, global_params = [numpy.full(10_000, 1.0)], [numpy.zeros(10_000)]
    sent, norm = privatize(local, global_params, PrivacySettings(clip_norm=None), numpy.random.default_rng(0))
    assert sent is local and norm is None
    sent, norm = privatize(local, global_params, PrivacySettings(clip_norm=1.0), numpy.random.default_rng(0))
    assert norm == pytest.approx(100.0) and numpy.linalg.norm(sent[0]) == pytest.approx(1.0)
    sent, _ = privatize(local, global_params, PrivacySettings(clip_norm=1.0, noise_multiplier=2.0), numpy.random.default_rng(0))
    assert numpy.std(sent[0] - 0.01) == pytest.approx(2.0, rel=0.05)


def test_the_accountant_is_dp_accountings_rdp_over_the_noised_rounds() -> None:
    assert PrivacyAccountant(PrivacySettings()).epsilon() is None
    accountant = PrivacyAccountant(PrivacySettings(clip_norm=1.0, noise_multiplier=4.0, delta=1e-5))
    assert accountant.epsilon() == 0.0
    eps = []
    for _ in range(3):
        accountant.spend_round()
        eps.append(accountant.epsilon())
    reference = RdpAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(2.0), 3)
    assert eps[-1] == pytest.approx(reference.get_epsilon(1e-5))
    assert eps[0] < eps[1] < eps[2]
    louder = PrivacyAccountant(PrivacySettings(clip_norm=1.0, noise_multiplier=8.0, delta=1e-5))
    for _ in range(3):
        louder.spend_round()
    assert louder.epsilon() < eps[-1]  # type: ignore[operator]


def test_the_client_sends_rates_counts_and_scalars_only() -> None:
    rounds: list[dict] = []
    batches = [chain(range(10)), []]
    client = TemplateClient(TemplateScorer(), lambda: batches.pop(0), PrivacySettings(), PrivacyAccountant(PrivacySettings()), rounds.append)
    params, examples, metrics = client.fit(TemplateScorer().rates(), {})
    assert examples == 20 and metrics == {"examples_added": 20}
    assert [p.shape for p in params] == [(PAIR_BUCKETS,), (SOURCE_BUCKETS,)] and all(p.dtype == numpy.float64 for p in params)
    loss, n, extra = client.evaluate(params, {"server_round": 1, "num_rounds": 2})
    assert n == 20 and extra == {} and loss == pytest.approx(numpy.log(2))
    assert [r["step"] for r in rounds] == ["fit", "evaluate"] and rounds[-1]["final"] is False
    client.evaluate(params, {"server_round": 2, "num_rounds": 2})
    assert rounds[-1]["final"] is True


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity Flower's runtime sets in a process that runs a task."""
    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 7)


def train_message(content: RecordDict) -> Message:
    """A train message as the server's grid would deliver it to this host's ClientApp."""
    message = Message(content, dst_node_id=7, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = message.object_id
    return message


def host_context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.usefixtures("task")
def test_the_client_app_answers_a_plain_round_with_the_registered_client_unless_the_host_requires_secagg() -> None:
    client = TemplateClient(TemplateScorer(), lambda: chain(range(10)), PrivacySettings(), PrivacyAccountant(PrivacySettings()), lambda _: None)
    fit = fitins_to_recorddict(FitIns(ndarrays_to_parameters(TemplateScorer().rates()), {}), keep_input=True)
    flower_app.register(client, require_secure=False)
    reply = flower_app.client_app(message=train_message(fit), context=host_context())
    res = recorddict_to_fitres(reply.content, keep_input=True)
    assert res.num_examples == 20 and numpy.array_equal(parameters_to_ndarrays(res.parameters)[0], client.scorer.rates()[0])
    flower_app.register(client, require_secure=True)
    with pytest.raises(flower_app.PlainUpdateRefused, match="secure aggregation"):
        flower_app.client_app(message=train_message(fit), context=host_context())
    assert client.scorer.examples == 20  # refused before the client learned or answered


def test_the_run_bundle_carries_the_run_config_and_names_our_apps(tmp_path: Path) -> None:
    config = {"rounds": 3, "min-clients": 2, "record": "", "secure-aggregation": True, "max-weight": 1000.0}
    content, digest = build_fab(tmp_path / "fab", config)
    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        project = tomllib.loads(bundle.read("pyproject.toml").decode())
    assert project["tool"]["flwr"]["app"]["config"] == config
    assert project["tool"]["flwr"]["app"]["components"] == {"serverapp": "agent.federated.flower_app:server_app", "clientapp": "agent.federated.flower_app:client_app"}
    assert digest == hashlib.sha256(content).hexdigest()


def test_fit_metrics_are_averaged_by_examples() -> None:
    assert _weighted_metrics([(1, {"a": 1.0}), (3, {"a": 5.0, "b": "text"})]) == {"a": 4.0}
    assert _weighted_metrics([(0, {"a": 1.0})]) == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere", "--rounds", "1", "--min-clients", "1", "--insecure", "--allow-any-supernode"], "--listen"),
        (["--listen", "127.0.0.1:9092", "--rounds", "1", "--min-clients", "1", "--allow-any-supernode"], "--insecure on a loopback"),
        (["--listen", "10.1.2.3:9092", "--rounds", "1", "--min-clients", "1", "--insecure", "--allow-any-supernode"], "refused on the non-loopback"),
    ],
)
def test_serve_refuses_a_bad_address_and_clear_text_off_loopback(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["federated", "serve", *args])
    assert result.exit_code == 2 and message in result.output


def write_key(directory: Path, name: str, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, mode: int = 0o600) -> Path:
    """An OpenSSH key pair: ``name`` (the private key, ``mode``) and ``name.pub``."""
    private = directory / name
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    private.chmod(mode)
    (directory / f"{name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return private


def test_a_supernode_key_is_an_ecdsa_openssh_key_readable_by_its_owner_only(tmp_path: Path) -> None:
    good = write_key(tmp_path, "good", ec.generate_private_key(ec.SECP384R1()))
    check_private_key(str(good))
    assert load_public_key(tmp_path / "good.pub").startswith(b"-----BEGIN PUBLIC KEY-----")
    shared = write_key(tmp_path, "shared", ec.generate_private_key(ec.SECP384R1()), mode=0o640)
    with pytest.raises(KeyFileError, match="mode 0640, looser than 0600"):
        check_private_key(str(shared))
    edwards = write_key(tmp_path, "edwards", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(KeyFileError, match="NIST curve"):
        check_private_key(str(edwards))
    with pytest.raises(KeyFileError, match="NIST curve"):
        load_public_key(tmp_path / "edwards.pub")
    (tmp_path / "text").write_text("not a key")
    (tmp_path / "text").chmod(0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted OpenSSH private key"):
        check_private_key(str(tmp_path / "text"))
    with pytest.raises(KeyFileError, match="cannot be read"):
        check_private_key(str(tmp_path / "missing"))
    with pytest.raises(KeyFileError, match="is a directory"):
        read_private(str(tmp_path), "SuperExec secret file")


def test_an_agent_with_a_key_file_others_can_read_starts_no_supernode(tmp_path: Path) -> None:
    key = write_key(tmp_path, "agent", ec.generate_private_key(ec.SECP384R1()), mode=0o644)
    events: list[str] = []
    service = FederatedService(lambda: None, lambda name, _: events.append(name))
    overrides = ("collectors.access_log.enabled=true", "collectors.access_log.store_raw_keys=true", "mlops.federated.enabled=true", f"mlops.federated.auth_key_file={key}")
    # Flower's SuperNode authentication runs over TLS only: a key without a CA is a config error.
    with pytest.raises(ConfigError, match="mlops.federated.auth_key_file: needs mlops.federated.tls.ca_file"):
        load_config(None, overrides=overrides)
    overrides += (f"mlops.federated.tls.ca_file={tmp_path / 'ca.pem'}",)
    service.configure(load_config(None, overrides=overrides))
    status = service.status()
    assert status["state"] == "error" and status["authenticated"] is True and service._node is None and service._thread is None
    assert status["last_result"] == f"mlops.federated.auth_key_file: SuperNode key file {key} has mode 0644, looser than 0600: others could read it; run `chmod 600 {key}` as the agent's user"
    assert events == []


class NodesGrid:
    """The one grid call RecordingGrid's node filter uses: the SuperLink's online nodes."""

    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


def test_the_rounds_only_pick_the_supernodes_serve_registered() -> None:
    assert list(RecordingGrid(NodesGrid(), None, {11, 13}).get_node_ids()) == [11, 13]  # type: ignore[arg-type]
    assert list(RecordingGrid(NodesGrid(), None).get_node_ids()) == [11, 12, 13]  # type: ignore[arg-type]


SERVE = ["--listen", "127.0.0.1:9092", "--rounds", "1", "--min-clients", "1"]


def test_serve_requires_supernode_keys_or_an_explicit_open_fleet(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("")
    tls = ["--ca-file", str(cert), "--certfile", str(cert), "--keyfile", str(cert)]
    write_key(tmp_path, "agent", ec.generate_private_key(ec.SECP384R1()))
    cases = [
        ([*tls], "--supernode-keys"),
        (["--insecure", "--supernode-keys", str(tmp_path / "agent.pub")], "needs TLS"),
        ([*tls, "--allow-any-supernode", "--supernode-keys", str(tmp_path)], "exclude each other"),
        ([*tls, "--supernode-keys", str(tmp_path / "agent")], "is not an OpenSSH public key"),
        ([*tls, "--supernode-keys", str(tmp_path / "agent.pub"), "--superexec-secret-file", str(cert)], "looser than 0600"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["federated", "serve", *SERVE, *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_a_champion_mixture_gains_the_template_expert_and_registers_as_challenger_only(tmp_path: Path) -> None:
    vocab = Vocabulary(4096)
    champion = make_model("model", vocab)
    champion.observe(vocab.encode_many(chain(range(20))))
    fleet = TemplateScorer()
    fleet.observe_keys(chain(range(100)))
    scorer = TemplateScorer()
    scorer.set_shared(fleet.rates())
    # The host's scorer has seen its templates (their text stays on the host, in the registry's
    # private files like the vocabulary); the loaded model proposes them at once.
    scorer.observe_keys([b"user:1:profile", b"user:2:orders", b"cart:3:items"])
    champion.add_template(vocab, scorer)
    assert champion.template is scorer and champion.hits.shape == champion.proposals.shape == (4,)
    with pytest.raises(ValueError, match="already"):
        champion.add_template(vocab, scorer)
    registry = ModelRegistry(tmp_path / "registry")
    files = save_model(champion, vocab, tmp_path / "staging")
    version = registry.register("fleet", [tmp_path / "staging" / name for name in files], {"kind": "federated"}, first_is_champion=False)
    assert registry.aliases("fleet") == {"champion": None, "challenger": None}
    loaded, loaded_vocab = registry.load_model("fleet", version)
    assert loaded.template is not None and numpy.array_equal(loaded.template.shared_pair, scorer.shared_pair)
    ident = loaded_vocab.encode(b"user:999:profile")
    assert loaded.predict_one(ident, 1)[0][0] == loaded_vocab.encode(b"user:999:orders")


def test_a_mixture_starts_from_another_mixtures_expert_weights() -> None:
    vocab = Vocabulary(4096)
    warm = MixtureModel(vocab, vocab.capacity, template=TemplateScorer())
    for _ in range(3):
        warm.observe(vocab.encode_many(chain(range(40))))
        warm.predict(vocab.encode_many([b"user:1:profile"]), 2)
    weights = warm.expert_weights()
    assert weights[1].sum() > 0  # the warm mixture measured its experts
    cold = MixtureModel(vocab, vocab.capacity, template=TemplateScorer())
    cold.set_expert_weights(weights)
    assert numpy.array_equal(cold.precision, warm.precision) and not numpy.array_equal(cold.precision, MixtureModel(vocab, vocab.capacity, template=TemplateScorer()).precision)
    weights[0][0] = -1.0
    assert cold.hits[0] != -1.0  # a copy, not the warm model's arrays
    with pytest.raises(ValueError, match="3 experts"):
        MixtureModel(vocab, vocab.capacity).set_expert_weights(cold.expert_weights())
    with pytest.raises(ValueError, match="hits <= proposals"):
        cold.set_expert_weights([numpy.ones(4), numpy.zeros(4)])
