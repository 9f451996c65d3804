"""``avala-infer`` commands for agents (create, list, get, update, delete, test, executions; pull mode: pull,
answer) and for the human side of the workflow (``tasks complete|review|reject``, ``results accept|reject``):
thin calls to the local client, added to the ``avala-infer`` group (and its ``tasks`` group) by ``cli/app.py``.

Every command takes ``--home``; those that show something take ``--json``. Exit codes: 0 done; 1 an error
(unknown agent, task or result, bad configuration, a lease that is not yours or has expired, a failed
``agents test``); 2 a usage error.
"""

from __future__ import annotations

import getpass
import socket
import sys
from typing import Any

import click

from avala_infer.cli.common import (
    EXIT_ERROR,
    cursor_option,
    echo_fields,
    echo_json,
    echo_page,
    home_option,
    json_option,
    limit_option,
    map_errors,
    store_client,
)
from avala_infer.store import PULL_ACTIONS


def _default_holder() -> str:
    """The pull consumer this command line is: the same for every command of one user on one host, so that
    ``agents answer`` may answer what ``agents pull`` leased (pass --holder to run several consumers)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name (some containers): one consumer per host
        user = "user"
    return f"cli:{user}@{socket.gethostname()}"


holder_option = click.option(
    "--holder", default=None, help="Who holds the leases (default: cli:USER@HOST, the same for pull and answer)."
)


# ---------------------------------------------------------------------------------------------------- agents
@click.group("agents")
def agents_group() -> None:
    """Agents: told of events in the workflow, by a signed POST to their callback URL (push), or, with no URL,
    by executions that wait for a consumer to pull and answer them (pull)."""


def _stats(agent) -> str:
    stats = agent.execution_stats or {}
    counts = ", ".join(f"{k}={v}" for k, v in stats.items() if k not in ("total", "pending_deliveries"))
    return f"{stats.get('total', 0)} ({counts or 'none'}); {stats.get('pending_deliveries', 0)} pending"


def _agent_fields(agent) -> list[tuple[str, Any]]:
    fields = [
        ("uid", agent.uid),
        ("name", agent.name),
        ("description", agent.description),
        ("events", ", ".join(agent.events) or "none"),
        ("callback_url", agent.callback_url or "none (pull mode: `avala-infer agents pull`)"),
        ("is_active", agent.is_active),
        ("project", agent.project or "all projects"),
        ("task_types", ", ".join(agent.task_types) or "all"),
        ("executions", _stats(agent)),
        ("created_at", agent.created_at),
        ("updated_at", agent.updated_at),
    ]
    if agent.secret:
        fields.insert(3, ("secret", agent.secret))
    return fields


def _show_agent(agent, as_json: bool) -> None:
    if as_json:
        echo_json(agent)
    else:
        echo_fields(_agent_fields(agent))


event_option = click.option(
    "-e", "--event", "events", multiple=True, help="An event type to listen to (repeatable), e.g. task.completed."
)
task_type_option = click.option(
    "--task-type", "task_types", multiple=True, help="Only events of this model type (repeatable; default all)."
)


def _refuse_secret_argument(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(
            "--secret is no longer accepted: a command line is visible to every user of this host (ps, /proc). "
            "Pass the secret with --secret-file PATH (a file only you can read) or --secret-stdin "
            "(e.g. `avala-infer agents create NAME --secret-stdin < secret.txt`)",
            ctx,
        )


def secret_options(what: str, default: str = ""):
    """``--secret-file PATH`` and ``--secret-stdin`` (the secret never on argv), and a hidden ``--secret`` that
    refuses with a message naming them, so an old script is told what to use instead."""

    def decorate(command):
        command = click.option(
            "--secret", hidden=True, expose_value=False, callback=_refuse_secret_argument, is_eager=True
        )(command)
        command = click.option(
            "--secret-stdin",
            is_flag=True,
            help=f"Read {what} from standard input (trailing newlines dropped){default}.",
        )(command)
        return click.option(
            "--secret-file",
            type=click.Path(exists=True, dir_okay=False, readable=True),
            default=None,
            help=f"Read {what} from this file (trailing newlines dropped; keep it private: chmod 600){default}.",
        )(command)

    return decorate


def _read_secret(secret_file: str | None, secret_stdin: bool) -> str | None:
    """The secret from --secret-file or --secret-stdin (None when neither is given)."""
    if secret_file and secret_stdin:
        raise click.UsageError("give the secret once: --secret-file or --secret-stdin, not both")
    if secret_file:
        with open(secret_file, encoding="utf-8") as f:
            secret, source = f.read(), secret_file
    elif secret_stdin:
        stdin = click.get_text_stream("stdin")
        if stdin.isatty():
            secret, source = click.prompt("secret", hide_input=True, err=True), "the prompt"
        else:
            secret, source = stdin.read(), "standard input"
    else:
        return None
    secret = secret.rstrip("\r\n")
    if not secret.strip():
        raise click.UsageError(f"the secret read from {source} is empty; put the secret there")
    return secret


@agents_group.command("create")
@click.argument("name")
@event_option
@click.option("--description", default=None, help="What the agent is for.")
@click.option("--callback-url", default=None, help="Where events are POSTed (http/https); none: a pull agent.")
@click.option("--project", default=None, help="Only this project's events (default: every project).")
@task_type_option
@click.option("--inactive", is_flag=True, help="Create it inactive (it receives nothing until activated).")
@secret_options("the signing secret", "; default: a random 64-hex-digit one")
@home_option
@json_option
@map_errors
def agents_create(
    name, events, description, callback_url, project, task_types, inactive, secret_file, secret_stdin, home, as_json
):
    """Create agent NAME listening to --event types. Its signing secret (the HMAC-SHA256 key of the
    X-Avala-Webhook-Signature header) is printed now and never again; give your own with --secret-file or
    --secret-stdin (never on the command line, which every user of the host can see)."""
    secret = _read_secret(secret_file, secret_stdin)
    with store_client(home) as client:
        agent = client.agents.create(
            name=name,
            events=list(events),
            description=description,
            callback_url=callback_url,
            is_active=not inactive,
            project=project,
            task_types=list(task_types),
            secret=secret,
        )
    _show_agent(agent, as_json)
    click.echo("the secret is shown only now: keep it to verify X-Avala-Webhook-Signature", err=True)


@agents_group.command("list")
@limit_option
@cursor_option
@home_option
@json_option
@map_errors
def agents_list(limit, cursor, home, as_json) -> None:
    """The agents, oldest first."""
    with store_client(home) as client:
        page = client.agents.list(limit=limit, cursor=cursor)
    echo_page(
        page,
        as_json,
        f"{'UID':<22} {'NAME':<24} {'ACTIVE':<6} {'MODE':<4} {'RUNS':>5}  EVENTS",
        lambda a: (
            f"{a.uid:<22} {a.name:<24} {'yes' if a.is_active else 'no':<6} {'pull' if a.pull_mode else 'push':<4} "
            f"{(a.execution_stats or {}).get('total', 0):>5}  {', '.join(a.events) or '-'}"
        ),
    )


@agents_group.command("get")
@click.argument("uid")
@home_option
@json_option
@map_errors
def agents_get(uid, home, as_json) -> None:
    """One agent: events, callback URL, filters and execution counts (not its secret)."""
    with store_client(home) as client:
        agent = client.agents.get(uid)
    _show_agent(agent, as_json)


@agents_group.command("update")
@click.argument("uid")
@click.option("--name", default=None, help="A new name.")
@event_option
@click.option("--description", default=None, help="A new description.")
@click.option("--callback-url", default=None, help='A new callback URL ("" makes it a pull agent).')
@click.option("--project", default=None, help="Only this project's events from now on.")
@task_type_option
@click.option("--active/--inactive", "is_active", default=None, help="Activate or deactivate it.")
@secret_options("a new signing secret")
@home_option
@json_option
@map_errors
def agents_update(
    uid, name, events, description, callback_url, project, task_types, is_active, secret_file, secret_stdin, home,
    as_json,
):  # fmt: skip
    """Change an agent: the options given replace what it had (--event and --task-type replace the whole list;
    --secret-file or --secret-stdin replace its signing secret from the next delivery on)."""
    secret = _read_secret(secret_file, secret_stdin)
    with store_client(home) as client:
        agent = client.agents.update(
            uid,
            name=name,
            events=list(events) or None,
            description=description,
            callback_url=callback_url,
            is_active=is_active,
            project=project,
            task_types=list(task_types) or None,
            secret=secret,
        )
    _show_agent(agent, as_json)


@agents_group.command("delete")
@click.argument("uid")
@home_option
@map_errors
def agents_delete(uid, home) -> None:
    """Delete an agent (events not yet sent to it are dropped; its executions stay on record)."""
    with store_client(home) as client:
        client.agents.delete(uid)
    click.echo(f"agent {uid} deleted")


@agents_group.command("test")
@click.argument("uid")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1), help="Seconds to wait.")
@home_option
@json_option
@map_errors
def agents_test(uid, timeout, home, as_json) -> None:
    """Send a signed agent.test event to the agent's callback URL now; exits 1 unless it answered 2xx."""
    with store_client(home) as client:
        result = client.agents.test(uid, timeout=timeout)
    if as_json:
        echo_json(result)
    else:
        echo_fields([(k, result.get(k)) for k in ("success", "status_code", "latency_ms", "message")])
    if not result.get("success"):
        sys.exit(EXIT_ERROR)


@agents_group.command("executions")
@click.argument("uid")
@limit_option
@cursor_option
@home_option
@json_option
@map_errors
def agents_executions(uid, limit, cursor, home, as_json) -> None:
    """An agent's executions, oldest first: delivery attempts, pull-mode answers and tests."""
    with store_client(home) as client:
        page = client.agents.list_executions(uid, limit=limit, cursor=cursor)

    def row(e) -> str:
        outcome = e.action or (f"HTTP {e.response_status}" if e.response_status else "") or ""
        detail = e.reason or e.error or ""
        return f"{e.uid:<21} {e.event_type:<20} {e.status:<9} {outcome:<9} {e.task or '-':<22} {detail}"

    echo_page(page, as_json, f"{'UID':<21} {'EVENT':<20} {'STATUS':<9} {'OUTCOME':<9} {'TASK':<22} DETAIL", row)


@agents_group.command("pull")
@click.argument("agent")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 1000), help="At most this many.")
@click.option(
    "--lease", default=300.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds to answer them in."
)
@holder_option
@home_option
@json_option
@map_errors
def agents_pull(agent, limit, lease, holder, home, as_json) -> None:
    """Lease pending executions of pull agent AGENT: they are yours for --lease seconds (answer each with
    `avala-infer agents answer EXECUTION --action ...`); unanswered, they go back to pending."""
    holder = holder or _default_holder()
    with store_client(home) as client:
        leased = client.agents.lease_executions(agent, limit=limit, lease_seconds=lease, holder=holder)
    if as_json:
        echo_json(leased)
        return
    click.echo(f"{'EXECUTION':<36} {'EVENT':<20} TASK")
    for e in leased:
        click.echo(f"{e.uid:<36} {e.event_type:<20} {e.task or '-'}")
    click.echo(f"{len(leased)} leased by {holder} for {lease:g} s", err=True)


@agents_group.command("answer")
@click.argument("execution")
@click.option(
    "--action", required=True, type=click.Choice(PULL_ACTIONS), help="approve/reject also review/reject the task."
)
@click.option("--reason", default=None, help="Why (recorded with the answer; travels in the task's event).")
@holder_option
@home_option
@json_option
@map_errors
def agents_answer(execution, action, reason, holder, home, as_json) -> None:
    """Answer a pulled EXECUTION: approve (its task becomes reviewed), reject (rejected), flag or skip."""
    with store_client(home) as client:
        recorded = client.agents.respond(execution, action=action, reason=reason, holder=holder or _default_holder())
    if as_json:
        echo_json(recorded)
    else:
        click.echo(f"execution {execution}: {action}" + (f" (task {recorded.task})" if recorded.task else ""))


# ---------------------------------------------------------------------------------------------------- tasks
def _task_command(verb: str, doc: str):
    @click.command(verb)
    @click.argument("task")
    @click.option("--reason", default=None, help="Why (travels in the event).")
    @home_option
    @json_option
    @map_errors
    def command(task, reason, home, as_json) -> None:
        with store_client(home) as client:
            updated = getattr(client.tasks, verb)(task, reason=reason)
        if as_json:
            echo_json(updated)
        else:
            click.echo(f"task {updated.uid} {updated.status}")

    command.help = doc
    return command


task_complete = _task_command("complete", "Mark TASK completed (a person finished it): task.completed.")
task_review = _task_command("review", "Mark TASK reviewed (it passed review): task.reviewed.")
task_reject = _task_command("reject", "Reject TASK: task.rejected.")


# ---------------------------------------------------------------------------------------------------- results
@click.group("results")
def results_group() -> None:
    """The automatic (draft) results of a task: list, accept, reject."""


@results_group.command("list")
@click.argument("task")
@home_option
@json_option
@map_errors
def results_list(task, home, as_json) -> None:
    """TASK's results, one per model that labeled it."""
    with store_client(home) as client:
        results = client.tasks.results(task)
    if as_json:
        echo_json(results)
        return
    click.echo(f"{'UID':<21} {'MODEL TYPE':<24} {'DRAFT':<5} MODEL")
    for r in results:
        click.echo(f"{r['uid']:<21} {r['model_type']:<24} {'yes' if r.get('is_draft') else 'no':<5} {r['model']}")


def _result_command(verb: str, doc: str):
    @click.command(verb)
    @click.argument("result")
    @click.option("--reason", default=None, help="Why (travels in the event).")
    @home_option
    @json_option
    @map_errors
    def command(result, reason, home, as_json) -> None:
        with store_client(home) as client:
            outcome = getattr(client.results, verb)(result, reason=reason)
        if as_json:
            echo_json(outcome)
        else:
            click.echo(f"result {result} {'accepted' if outcome['accepted'] else 'rejected'}")

    command.help = doc
    return command


results_group.add_command(_result_command("accept", "Accept RESULT (it is no longer a draft): result.accepted."))
results_group.add_command(_result_command("reject", "Reject RESULT (it is deleted): result.rejected."))
