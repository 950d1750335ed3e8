import pytest
import yaml

from robot_wsrl.learn.config import compose_config, config_hash, prepare_out_dir


def test_commands_pick_their_default_agent():
    pre = compose_config("pretrain", ["run.dataset=d.npz"])
    fine = compose_config("finetune")
    assert (pre.agent.name, pre.agent.regularizer, pre.agent.utd) == ("cql", "cql", 1)
    assert (fine.agent.name, fine.agent.regularizer, fine.agent.utd) == ("wsrl", "none", 4)
    assert (
        fine.agent.num_critics == 10 and fine.agent.num_target_critics == 2 and fine.agent.critic_layer_norm
    )
    assert (fine.agent.actor_lr, fine.agent.critic_lr, fine.agent.temperature_lr) == (1e-4, 3e-4, 1e-4)
    assert fine.run.warmup_steps == 5000 and fine.run.offline_ratio == 0.0


def test_overrides_and_groups():
    cfg = compose_config("finetune", ["env=inverted_pendulum", "agent.utd=2", "agent=calql"])
    assert cfg.env.driver == "gym:InvertedPendulum-v5"
    assert cfg.agent.utd == 2 and cfg.agent.regularizer == "calql"


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent.bogus=1", "bogus"),
        ("agent.utd=abc", "utd"),
        ("agent.actor_objective=median", "actor_objective"),
        ("run.offline_ratio=0.5", "run.dataset"),
        ("agent.num_target_critics=11", "num_target_critics"),
    ],
)
def test_bad_config_is_refused_clearly(override, message):
    with pytest.raises(Exception, match=message):
        compose_config("finetune", [override])


def test_hash_ignores_presentation_and_tracks_settings(tmp_path):
    a = compose_config("finetune", [f"out_dir={tmp_path}/a", "progress=false"])
    b = compose_config("finetune", [f"out_dir={tmp_path}/b"])
    c = compose_config("finetune", ["agent.utd=2"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_run_folder_holds_resolved_config_and_hash(tmp_path):
    cfg = compose_config("finetune", [f"out_dir={tmp_path}/run", "seed=7"])
    out = prepare_out_dir(cfg)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 7 and saved["agent"]["num_critics"] == 10
    assert (out / "config_hash.txt").read_text().strip() == config_hash(cfg)


def test_recipes_pin_the_papers_settings_and_the_cpu_length():
    """`recipe=paper` is the paper's scale whatever the defaults; `recipe=cpu` differs from it only in
    length; a later override still wins."""
    data = ["run.dataset=x.npz"]
    paper = compose_config("pretrain", ["recipe=paper", *data])
    cpu = compose_config("pretrain", ["recipe=cpu", *data])
    assert (paper.run.steps, paper.agent.cql.num_samples, paper.agent.num_critics) == (250_000, 10, 10)
    assert paper.agent.cql.max_target_backup and paper.agent.cql.alpha == 5.0
    assert cpu.run.steps == 16_000 and cpu.agent == paper.agent
    assert compose_config("pretrain", ["recipe=cpu", "run.steps=7", *data]).run.steps == 7
    online = compose_config("finetune", ["recipe=paper", "agent.utd=1"])
    assert (online.run.steps, online.run.warmup_steps, online.agent.batch_size) == (100_000, 5_000, 256)
    assert online.agent.utd == 1 and online.run.offline_ratio == 0.0
