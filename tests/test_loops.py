"""The search loops' parts and both loops end to end against scripted fake LLM servers (the real openai and
anthropic clients over HTTP on 127.0.0.1) with a stand-in evaluator that answers at once (`fake_eval.py`:
same command-line contract as `fibmoe eval --json`). The real evaluator runs in test_loops_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fibmoe import variants
from fibmoe.loops import agent, candidate, evolve, llm, sandbox
from fibmoe.loops.runs import Run

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm import FakeLLM  # noqa: E402

TESTS = Path(__file__).parent
REPO = TESTS.parent
KERNEL = (REPO / "examples/openevolve/initial_program.py").read_text()


def edit(search: str, replace: str) -> str:
    return f"An idea in one line.\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


@pytest.fixture
def fake_llm():
    servers = []

    def start(script):
        servers.append(FakeLLM(script).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def start_file(tmp_path):
    path = tmp_path / "kernel.py"
    path.write_text(KERNEL.replace("# EVOLVE-BLOCK-START", "# FAKE_SCORE=1.0\n# EVOLVE-BLOCK-START"))
    return path


def fake_options(tmp_path, **kw) -> sandbox.EvalOptions:
    os.environ["FAKE_EVAL_LOG"] = str(tmp_path / "evals.log")
    return sandbox.EvalOptions(
        definition="small",
        device="cpu",
        timeout_s=kw.pop("timeout_s", 5),
        repeats=kw.pop("repeats", 2),
        eval_command=[sys.executable, str(TESTS / "fake_eval.py")],
        **kw,
    )


def _alive(pid: int) -> bool:
    """Running (a zombie left to whatever reaps orphans here counts as dead)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False


def eval_log(tmp_path) -> list[dict]:
    path = tmp_path / "evals.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def evolve_config(start_file, server, tmp_path, iterations: int, timeout_s: float) -> evolve.EvolveConfig:
    """An evolve run from the start file that asks the fake model and is evaluated by the stand-in evaluator
    (its first stage on T=1)."""
    return evolve.EvolveConfig(
        start=str(start_file),
        iterations=iterations,
        llm=llm.LLMConfig(base_url=server.url + "/v1"),
        eval=fake_options(tmp_path, timeout_s=timeout_s),
        smoke_seq_len=1,
    )


def start_loop(config: agent.AgentConfig | evolve.EvolveConfig, runs: Path, **popen) -> subprocess.Popen:
    """The loop `config` configures (agent or evolve) in a subprocess, in a process group of its own (so that a
    test can kill it whole, as a kill from outside would)."""
    loop = "agent" if isinstance(config, agent.AgentConfig) else "evolve"
    code = (
        f"import json; from pathlib import Path; from fibmoe.loops import {loop}\n"
        f"cfg = {loop}.{type(config).__name__}.from_dict(json.loads({json.dumps(json.dumps(config.to_dict()))}))\n"
        f"{loop}.{loop}(cfg, runs_dir=Path({str(runs)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True, **popen)


def kill_loop(proc: subprocess.Popen, tmp_path) -> None:
    """SIGKILL the loop's whole process group; no evaluation it started may outlive it (not even a worker's)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert all(not _alive(e["pid"]) for e in eval_log(tmp_path))


# ---- static checks and replies ------------------------------------------------------------------


def test_every_rung_and_the_example_pass_the_static_checks():
    for v in variants.discover():
        assert candidate.static_problems(candidate.from_variant(v)) == [], v.name
    example = candidate.Candidate({"k.py": KERNEL}, "k.py")
    assert candidate.static_problems(example) == []


@pytest.mark.parametrize(
    "change, reason",
    [
        (("import torch", "import torch\nimport flashinfer"), "forbids kernel libraries"),
        (("import torch", "import torch\nfrom deep_gemm import fp8_gemm_nt"), "forbids kernel libraries"),
        (("import torch", "import torch\nimport socket"), "no file, process or network access"),
        (("    t, h = hidden_states.shape", "    t, h = hidden_states.shape\n    open('/tmp/x')"), "calls open()"),
        (("    t, h = hidden_states.shape", "    t, h = hidden_states.shape\n    torch.save(output, 'o')"), "save"),
        (("BLOCK = 128", "BLOCK = 128\n_SEEN = {}"), None),  # a module-level dict alone is fine (scratch)
        (("    output.copy_(acc", "    _SEEN[0] = output\n    output.copy_(acc"), "stores `output` into module-level"),
        (("    output.copy_(acc.to(torch.bfloat16))", "    output.copy_(_SEEN[t])"), "copies module-level _SEEN"),
        (("def _route(", "@functools.lru_cache\ndef _route("), "@lru_cache"),
        (("    output,\n):", "):"), "takes 10 positional parameters"),
        (("def _dequant(q, scale):", "def _dequant(q, scale:"), "syntax error"),
    ],
)
def test_static_checks_say_why(change, reason):
    text = KERNEL.replace("BLOCK = 128", "BLOCK = 128\n_SEEN = {}") if "_SEEN[" in change[1] else KERNEL
    assert change[0] in text
    problems = candidate.static_problems(candidate.Candidate({"k.py": text.replace(change[0], change[1], 1)}, "k.py"))
    if reason is None:
        assert problems == []
    else:
        assert any(reason in p for p in problems), problems
        assert all(p.startswith("k.py:") for p in problems)


def test_replies_become_candidates_or_say_what_is_wrong():
    base = candidate.Candidate({"main.py": "def run():\n    return 1\n", "helper.py": "X = 1\n"}, "main.py")
    new = candidate.apply_reply(base, edit("    return 1", "    return 2"))
    assert new.files["main.py"] == "def run():\n    return 2\n" and new.files["helper.py"] == "X = 1\n"
    new = candidate.apply_reply(base, "FILE: helper.py\n" + edit("X = 1", "X = 3"))
    assert new.files["helper.py"] == "X = 3\n"
    new = candidate.apply_reply(base, "Rewritten:\n```python\ndef run():\n    return 5\n```\n")
    assert new.files["main.py"] == "def run():\n    return 5\n"
    new = candidate.apply_reply(base, "FILE: extra.py\n```python\nY = 2\n```\n")
    assert new.files["extra.py"] == "Y = 2\n"
    bad = {
        "": "empty",
        "Sorry, I cannot help with that.": "no change found",
        "\x00\x7f garbage }{": "no change found",
        edit("    return 7", "    return 2"): "does not match the file exactly",
        "<<<<<<< SEARCH\n    return 1\n>>>>>>> REPLACE\n": "malformed",
        "FILE: nope.py\n" + edit("a", "b"): "not one of the files",
        edit("    return 1", "    return 1"): "leaves every file as it was",
    }
    for reply, why in bad.items():
        with pytest.raises(candidate.CandidateError, match=why):
            candidate.apply_reply(base, reply)
    twice = candidate.Candidate({"main.py": "x = 1\nx = 1\ndef run():\n    pass\n"}, "main.py")
    with pytest.raises(candidate.CandidateError, match="matches 2 places"):
        candidate.apply_reply(twice, edit("x = 1", "x = 2"))


# ---- the model clients -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_llm_retries_rate_limits_and_records_usage(fake_llm, provider):
    server = fake_llm([{"status": 429, "retry_after": 0}, {"status": 503}, {"text": "hello"}, {"status": 401}])
    base = server.url + ("/v1" if provider == "openai" else "")
    waits = []
    client = llm.LLM(llm.LLMConfig(provider=provider, base_url=base, backoff_s=0.01, price=(1.0, 2.0)), waits.append)
    reply = client.complete("system text", "user text")
    assert reply.text == "hello"
    u = reply.usage
    assert (u.calls, u.retries) == (1, 2) and u.input_tokens > 0 and u.output_tokens > 0
    assert u.cost_usd == pytest.approx((u.input_tokens * 1.0 + u.output_tokens * 2.0) / 1e6)
    assert waits[0] == 0.0 and 0 < waits[1] <= 0.02  # Retry-After honoured, then backoff
    paths = {r["path"] for r in server.requests}
    assert paths == ({"/v1/chat/completions"} if provider == "openai" else {"/v1/messages"})
    body = server.requests[-1]["body"]
    assert "system text" in json.dumps(body) and "user text" in json.dumps(body)
    with pytest.raises(llm.LLMError, match="refused the key") as e:
        client.complete("s", "u")
    assert e.value.fatal


def test_llm_garbage_and_exhausted_retries_are_errors(fake_llm, monkeypatch):
    server = fake_llm([{"garbage": True}, {"status": 429, "retry_after": 0}])
    client = llm.LLM(llm.LLMConfig(base_url=server.url + "/v1", retries=2, backoff_s=0.01), lambda s: None)
    with pytest.raises(llm.LLMError, match="not a chat completion") as e:
        client.complete("s", "u")
    assert not e.value.fatal
    with pytest.raises(llm.LLMError, match="HTTP 429"):
        client.complete("s", "u")
    assert len(server.requests) == 1 + 3  # the 429 was tried three times: the first and two retries
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(llm.LLMError, match="set OPENAI_API_KEY"):
        llm.LLM(llm.LLMConfig()).complete("s", "u")


# ---- the sandbox ---------------------------------------------------------------------------------


def test_a_hung_evaluation_is_killed_with_its_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"import subprocess, time; p = subprocess.Popen(['sleep', '600']); open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(600)"  # noqa: E501
    t0 = time.monotonic()
    res = sandbox.run_eval([sys.executable, "-c", script], timeout_s=2)
    assert time.monotonic() - t0 < 20
    assert res["timed_out"] and res["stage"] == "timeout" and "killed at the time limit" in res["error"]
    time.sleep(0.2)
    assert not _alive(int(pidfile.read_text()))  # the grandchild died too


@pytest.mark.slow  # the real evaluator on the CPU: torch imported in a subprocess
def test_a_hung_candidate_of_the_real_evaluator_dies_with_it(tmp_path):
    """`fibmoe eval` runs the candidate in a child of its own session (out of the evaluation's process
    group): killing the evaluation must kill that child too, and must not wait on the pipes it holds."""
    from test_cli import ARGS, write_variant

    pidfile = tmp_path / "candidate.pid"
    body = f"import os, time\n\n\ndef run({ARGS}, output):\n    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n    time.sleep(3600)\n"  # noqa: E501
    folder = write_variant(tmp_path / "hangs", body)
    opts = sandbox.EvalOptions(definition="small", device="cpu", seq_lens=[1])
    done = []
    waiter = threading.Thread(  # its start takes ~10 s; the kill must not wait on the candidate's pipes
        target=lambda: done.append(sandbox.run_eval(opts.command(folder, quick=True), timeout_s=40)), daemon=True
    )
    waiter.start()
    waiter.join(timeout=60)
    assert done, "the evaluation was not back 20 s after its limit"
    assert done[0]["timed_out"] and pidfile.exists(), done[0]
    deadline = time.monotonic() + 5
    while _alive(int(pidfile.read_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pidfile.read_text()))


def test_an_evaluation_started_after_ctrl_c_is_killed_at_once(tmp_path, monkeypatch):
    """Ctrl-C can come while a worker thread is between its Popen and registering the process (kill_running
    then misses it): the evaluation must see the stop and kill its process, not run to its time limit."""
    monkeypatch.setattr(sandbox, "_STOP", threading.Event())
    sandbox.kill_running()  # the interrupt, before this evaluation registers
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    t0 = time.monotonic()
    with pytest.raises(sandbox.Interrupted):
        sandbox.run_eval([sys.executable, "-c", code], timeout_s=60)
    assert time.monotonic() - t0 < 20 and not sandbox._LIVE
    if pidfile.exists():
        assert not _alive(int(pidfile.read_text()))


def test_a_loop_started_with_sigint_ignored_still_stops_on_ctrl_c():
    """An ignored SIGINT survives exec (a background job of a script, or a test worker some library left
    that way), and Python then raises no KeyboardInterrupt: the loops' entry (`interruptible`) undoes it."""
    code = (
        "import os, signal, time\n"
        "from fibmoe.processes import interruptible\n"
        "{call}os.kill(os.getpid(), signal.SIGINT); time.sleep(10)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    for call, interrupted in (("", False), ("interruptible(); ", True)):
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-c", code.format(call=call)], env=env, preexec_fn=ignore,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert ("KeyboardInterrupt" in r.stderr) == interrupted, r.stderr
        assert (time.monotonic() - t0 < 8) == interrupted


def test_eval_output_parsing():
    ok = sandbox.parse_eval_output('{"combined_score": 2.0, "all_passed": true}', "", 0)
    assert ok["combined_score"] == 2.0
    crash = sandbox.parse_eval_output("", "Segmentation fault", -11)
    assert crash["combined_score"] == 0.0 and "signal 11" in crash["error"]
    bad_input = sandbox.parse_eval_output("", "error: unknown variant 'x'", 2)
    assert bad_input["stage"] == "input" and "unknown variant" in bad_input["error"]


def test_gpu_slots_bound_parallel_evaluations(tmp_path):
    assert sandbox.parse_gpus("0,2", "cuda") == ["0", "2"] and sandbox.parse_gpus("2", "cuda") == ["0", "1"]
    assert sandbox.parse_gpus(None, "cpu") == []
    with pytest.raises(Exception, match="--gpus"):
        sandbox.parse_gpus("a,b", "cuda")
    held = []
    with sandbox.slot(tmp_path, ["0", "1"]) as a, sandbox.slot(tmp_path, ["0", "1"]) as b:
        held += [a, b]
    assert sorted(held) == ["0", "1"]
    cmd = sandbox.EvalOptions(definition="small", device="cpu", seq_lens=[1]).command(Path("/c"), quick=True)
    assert cmd[1:4] == ["-m", "fibmoe", "eval"] and "--json" in cmd and "--quick" in cmd
    assert cmd[cmd.index("--seq-len") + 1] == "1" and cmd[cmd.index("--definition") + 1] == "small"
    modal = sandbox.EvalOptions(backend="modal", modal_gpu="B200").command(Path("/c"), quick=False)
    assert modal[1:3] == ["-m", "fibmoe.loops.modal_eval"] and "B200" in modal


# ---- the agent, end to end (stand-in evaluator) ------------------------------------------------------


AGENT_SCRIPT = [
    {"status": 429, "retry_after": 0},  # a rate limit first: retried, not a step lost
    {"text": edit("# FAKE_SCORE=1.0", "# FAKE_SCORE=2.0")},  # a correct, faster kernel
    {"text": edit("# FAKE_SCORE=2.0", "# FAKE_HANG")},  # hangs: killed at the limit
    {"text": edit("# FAKE_SCORE=2.0", "# FAKE_FAIL")},  # fails the check
    {"text": edit("import torch", "import torch\nimport flashinfer")},  # a forbidden library
    {"text": edit("this line is not in the file", "x")},  # a malformed edit
    {"garbage": True},  # not even an API answer
    {"text": edit("# FAKE_SCORE=2.0", "# FAKE_SCORE=3.0 FAKE_FLAKY")},  # passes, then not: not trusted
    {"text": edit("# FAKE_SCORE=2.0", "# FAKE_SCORE=2.01")},  # verified, 0.5% better: within --min-gain 1%
]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_agent_runs_end_to_end(tmp_path, fake_llm, start_file, provider):
    server = fake_llm(AGENT_SCRIPT)
    url = server.url + ("/v1" if provider == "openai" else "")
    config = agent.AgentConfig(
        start=str(start_file),
        steps=8,
        llm=llm.LLMConfig(provider=provider, base_url=url, backoff_s=0.01),
        eval=fake_options(tmp_path, timeout_s=3),
    )
    summary = agent.agent(config, runs_dir=tmp_path / "runs")
    run = Run(Path(summary["folder"]))
    statuses = [(e["id"], e["status"], e.get("promoted", False)) for e in run.lineage()]
    assert statuses == [
        ("c0000", "verified", True),
        ("c0001", "verified", True),
        ("c0002", "timeout", False),
        ("c0003", "failed-quick", False),
        ("c0004", "rejected", False),
        ("c0005", "bad-reply", False),
        ("c0006", "llm-error", False),
        ("c0007", "flaky", False),
        ("c0008", "verified", False),
    ]
    assert summary["best"]["id"] == "c0001" and summary["best"]["score"] == 2.0
    assert summary["gain_over_start"] == 2.0 and summary["start"]["score"] == 1.0
    assert summary["usage"]["calls"] == 7 and summary["usage"]["retries"] == 1 and summary["usage"]["input_tokens"]
    # each verdict's reason reached the model on the next step
    prompts = [json.dumps(r["body"]) for r in server.requests]
    assert "killed at the time limit" in prompts[3]
    assert "INCORRECT_NUMERICAL" in prompts[4]
    assert "imports flashinfer" in prompts[5] and "forbids kernel libraries" in prompts[5]
    assert "does not match the file exactly" in prompts[6]
    # the hang was killed: the timeout ran its course once, the quick filter kept it from the full runs
    log = eval_log(tmp_path)
    assert [e["quick"] for e in log if e["folder"] == "c0002"] == [True]
    assert sum(e["folder"] == "c0001" and not e["quick"] for e in log) == 2  # the repeats
    # the best kernel is a variant folder the other commands take
    best = variants.load_variant(run.folder / "best")
    assert "FAKE_SCORE=2.0" in (run.folder / "best" / "kernel.py").read_text()
    assert variants.pack(best, "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e16_h256_i128").sources
    assert json.loads((run.folder / "config.json").read_text())["agent"]["steps"] == 8


@pytest.mark.slow  # a loop in a subprocess (torch and OpenEvolve imported again), killed
def test_agent_resumes_after_a_kill_without_redoing_work(tmp_path, fake_llm, start_file):
    """Kill the agent (its whole process group) while a hanging candidate is being evaluated, resume it:
    the finished steps are neither asked nor evaluated again; the interrupted one is evaluated anew."""
    script = [
        {"text": edit("# FAKE_SCORE=1.0", "# FAKE_SCORE=2.0")},
        {"text": edit("# FAKE_SCORE=2.0", "# FAKE_HANG")},
        {"text": edit("# FAKE_SCORE=2.0", "# FAKE_SCORE=4.0")},
    ]
    server = fake_llm(script)
    runs = tmp_path / "runs"
    config = agent.AgentConfig(
        start=str(start_file), steps=3, llm=llm.LLMConfig(base_url=server.url + "/v1"), eval=fake_options(tmp_path)
    )
    config.eval.timeout_s = 5  # the test kills the run well before the limit would
    proc = start_loop(config, runs, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(e["folder"] == "c0002" for e in eval_log(tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, "the hanging step never started"
        time.sleep(0.2)
    kill_loop(proc, tmp_path)
    folder = next(runs.iterdir())
    assert [e["id"] for e in Run(folder).lineage()] == ["c0000", "c0001"]
    asked, evaluated = len(server.requests), len(eval_log(tmp_path))

    summary = agent.agent(agent.AgentConfig(steps=3), resume=folder)
    entries = Run(folder).lineage()
    assert [(e["id"], e["status"]) for e in entries] == [
        ("c0000", "verified"),
        ("c0001", "verified"),
        ("c0002", "timeout"),
        ("c0003", "verified"),
    ]
    assert len(server.requests) == asked + 1  # only step 3 was asked; step 2's reply was on disk
    redone = {e["folder"] for e in eval_log(tmp_path)[evaluated:]}
    assert redone == {"c0002", "c0003"}  # c0000 and c0001 were not evaluated again
    assert summary["best"]["id"] == "c0003" and summary["best"]["score"] == 4.0
    # a finished run resumed with more steps carries on from where it ended
    more = agent.agent(agent.AgentConfig(steps=4), resume=folder)
    assert more["steps_done"] == 4 and len(Run(folder).lineage()) == 5


def test_agent_from_scratch_writes_the_first_kernel_whole(tmp_path, fake_llm):
    server = fake_llm([{"text": "Here it is.\nFILE: kernel.py\n```python\n" + KERNEL + "\n```\n"}])
    config = agent.AgentConfig(
        start="scratch", steps=1, llm=llm.LLMConfig(base_url=server.url + "/v1"), eval=fake_options(tmp_path)
    )
    summary = agent.agent(config, runs_dir=tmp_path / "runs")
    assert summary["best"]["id"] == "c0001" and summary["start"]["score"] is None
    prompt = json.dumps(server.requests[0]["body"])
    assert "def route(" in prompt and "There is no kernel yet" in prompt  # the reference's source is shown


def test_agent_bad_start_is_one_error(tmp_path):
    from fibmoe.errors import FibmoeError

    with pytest.raises(FibmoeError, match="unknown variant"):
        agent.agent(agent.AgentConfig(start="no-such-rung"), runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# ---- evolve, end to end (stand-in evaluator) --------------------------------------------------------


def test_evolve_runs_openevolve_and_resumes(tmp_path, fake_llm, start_file):
    script = [
        {"text": edit("# FAKE_SCORE=1.0", "# FAKE_SCORE=2.0")},
        {"text": edit("# FAKE_SCORE=1.0", "# FAKE_HANG")},
        {"text": edit("import torch", "import torch\nimport deep_gemm")},
        {"text": "no idea"},
        {"text": edit("# FAKE_SCORE=1.0", "# FAKE_FAIL")},
    ]
    server = fake_llm(script)
    config = evolve_config(start_file, server, tmp_path, iterations=3, timeout_s=3)
    summary = evolve.evolve(config, runs_dir=tmp_path / "runs")
    run = Run(Path(summary["folder"]))
    entries = {e["id"]: e for e in run.lineage()}
    start = next(e for e in entries.values() if e["parent"] is None)
    assert start["status"] == "verified" and start["score"] == 1.0
    statuses = sorted(e["status"] for e in entries.values() if e["parent"])
    assert statuses == ["rejected", "timeout", "verified"]
    improved = next(e for e in entries.values() if e["parent"] and e["status"] == "verified")
    assert improved["parent"] == start["id"] and improved["tokens"]["calls"] == 1
    assert summary["best"]["id"] == improved["id"] and summary["gain_over_start"] == 2.0
    assert "FAKE_SCORE=2.0" in (run.folder / "best" / "kernel.py").read_text()
    assert summary["iterations_done"] == 3 and summary["usage"]["calls"] == 3
    # the cascade: the timeout and the rejected one stopped at stage 1; stage 3 ran the repeats
    log = eval_log(tmp_path)
    assert sum(not e["quick"] and e["folder"] == improved["id"] for e in log) == 2
    assert "--seq-len" in log[0]["args"]  # stage 1 builds and checks on the smallest T alone

    evaluated = len(log)
    more = evolve.evolve(evolve.EvolveConfig(iterations=5), resume=run.folder)
    assert more["iterations_done"] == 5 and len(server.requests) == 5
    new = {e["folder"] for e in eval_log(tmp_path)[evaluated:]}
    assert start["id"] not in new and improved["id"] not in new  # nothing done before was evaluated again


# ---- the Modal backend (Modal itself stood in for: no network) -------------------------------------


def test_modal_backend_speaks_the_eval_contract(monkeypatch, tmp_path, start_file):
    from fib_fakes import evaluation, real_benchmark_factory, small_dataset_copy

    from fibmoe import remote
    from fibmoe.loops import modal_eval

    volume = small_dataset_copy(tmp_path / "data")
    failing = {}

    def plan(solution, uuid):
        if uuid in failing:
            return evaluation("INCORRECT_NUMERICAL", log="matched ratio 0.5")
        return evaluation(latency=2.0)

    factory = real_benchmark_factory(monkeypatch, plan)
    sent = []

    def executor(gpu, requests):  # one "container" per request, run here
        sent.append(gpu)
        return [remote.remote_body({**r, "dataset_root": str(volume)}, factory) for r in requests]

    res = modal_eval.evaluate_remote(str(start_file), "b200", "small", quick=True, executor=executor)
    assert sent == ["B200"] and res["device"] == "modal:B200" and res["mode"] == "quick official"
    assert res["all_passed"] and res["workloads"] == 5 and res["combined_score"] == pytest.approx(10.0)
    assert res["settings"] == {"warmup": 3, "iterations": 10, "trials": 1}
    failing[res["per_workload"][1]["uuid"]] = True
    bad = modal_eval.evaluate_remote(str(start_file), "b200", "small", seq_lens=[1, 3], executor=executor)
    assert not bad["all_passed"] and bad["combined_score"] == 0.0 and bad["workloads"] == 2
    assert "INCORRECT_NUMERICAL" in bad["error"]
    assert modal_eval.main([str(tmp_path / "missing.py"), "--definition", "small"]) == 2


def test_each_worker_sees_only_its_gpu():
    code = "import json, os; print(json.dumps({'combined_score': 1.0, 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES')}))"
    assert sandbox.run_eval([sys.executable, "-c", code], 30, gpu="3")["gpu"] == "3"


# ---- the commands: bad input is one line and exit status 2 -------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["agent", "--from", "no-such-rung"], "unknown variant"),
        (["agent", "--eval-backend", "slurm"], "--eval-backend 'slurm'"),
        (["agent", "--eval-backend", "modal", "--gpu", "z9"], "unknown GPU"),
        (["agent", "--gpus", "a,b"], "--gpus"),
        (["agent", "--price", "cheap"], "--price"),
        (["agent", "--provider", "mistral"], "unknown provider"),
        (["agent", "--resume", "/no/such/run"], "not a run folder"),
        (["evolve", "--resume", "/no/such/run"], "not a run folder"),
        (["agent", "--from", "r1-torch", "--device", "cpu"], "set OPENAI_API_KEY"),
        (["evolve", "--provider", "anthropic", "--device", "cpu"], "set ANTHROPIC_API_KEY"),
    ],
)
def test_bad_input_is_one_error_line(args, message, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from fibmoe.cli import app

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path / "runs")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


@pytest.mark.slow  # a loop in a subprocess (torch and OpenEvolve imported again), killed
def test_evolve_resumes_after_a_kill(tmp_path, fake_llm, start_file):
    """Kill `evolve` (the whole process group) while a hanging candidate is evaluated; resume from OpenEvolve's
    last checkpoint: what was evaluated before is not evaluated again, and the run reaches its iterations."""
    server = fake_llm(
        [
            {"text": edit("import torch", "import torch\n# FAKE_SCORE=2.0")},
            {"text": edit("import torch", "import torch\n# FAKE_HANG")},
            {"text": edit("import torch", "import torch\n# FAKE_SCORE=3.0")},
        ]
    )
    runs = tmp_path / "runs"
    config = evolve_config(start_file, server, tmp_path, iterations=2, timeout_s=20)
    proc = start_loop(config, runs, stderr=subprocess.DEVNULL)
    hang = "FAKE_HANG"
    deadline = time.monotonic() + 120
    folder = None
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, "the hanging candidate never started"
        folder = next(runs.iterdir(), None) if runs.is_dir() else None
        started = [e["folder"] for e in eval_log(tmp_path)]
        if folder and any(hang in (folder / "candidates" / c / "kernel.py").read_text() for c in set(started)):
            break
        time.sleep(0.2)
    kill_loop(proc, tmp_path)
    before = {e["folder"] for e in eval_log(tmp_path)}
    evaluated = len(eval_log(tmp_path))
    summary = evolve.evolve(None, resume=folder)
    assert summary["iterations_done"] == 2 and summary["best"]["score"] == 3.0
    finished_before = {c for c in before if hang not in _entry_text(folder, c)}  # all but the killed one
    again = {e["folder"] for e in eval_log(tmp_path)[evaluated:]}
    assert again and not again & finished_before
    assert len(server.requests) == 3  # the resumed run asked only for the iteration that was lost


def _entry_text(run_folder: Path, cid: str) -> str:
    return (run_folder / "candidates" / cid / "kernel.py").read_text()


@pytest.mark.slow  # a loop in a subprocess (torch and OpenEvolve imported again), killed
def test_ctrl_c_stops_parallel_repeats_at_once_and_records_nothing_false(tmp_path, fake_llm, start_file):
    """Ctrl-C while the full runs go side by side in worker threads: the agent exits at once, every
    evaluation's process group is killed, no verdict is written for the interrupted candidate, and the
    run says how to resume."""
    server = fake_llm([{"text": edit("# FAKE_SCORE=1.0", "# FAKE_HANG_FULL")}])
    runs = tmp_path / "runs"
    config = agent.AgentConfig(
        start=str(start_file),
        steps=1,
        llm=llm.LLMConfig(base_url=server.url + "/v1"),
        eval=fake_options(tmp_path, timeout_s=120, workers=2),
    )
    proc = start_loop(config, runs, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while sum(e["folder"] == "c0001" and not e["quick"] for e in eval_log(tmp_path)) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the full runs never started"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)  # at once (a loaded CI machine: seconds), not after the 120 s limit
    assert proc.returncode != 0 and "fibmoe agent --resume" in stderr
    assert all(not _alive(e["pid"]) for e in eval_log(tmp_path))
    folder = next(runs.iterdir())
    assert not list((folder / "candidates" / "c0001").glob("eval-full-*.json"))
    assert (folder / "candidates" / "c0001" / "eval-quick.json").is_file()  # finished before: kept
    assert [e["id"] for e in Run(folder).lineage()] == ["c0000"]
