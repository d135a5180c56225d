"""The `appliance` command: set up a home, manage keys and models, and serve."""

from __future__ import annotations

import logging
import ssl
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from api.cli_admin import (
    TLS_CA_VARIABLE,
    TLS_CLIENT_CERT_VARIABLE,
    TLS_CLIENT_KEY_VARIABLE,
    gateway_tls,
)
from api.cli_residency import pinned_names, register_residency_commands, residency_text
from api.cli_store import register_store_commands, store_app
from api.cli_unlock import register_unlock_commands
from api.cli_versions import register_version_commands
from api.doctor import doctor
from appliance.cli.code_bundle_models import register_code_bundle_commands
from appliance.cli.model_bundle import register_model_bundle_commands
from appliance.cli.model_serving import register_model_serving_commands
from appliance.cli.model_settings import register_model_settings_commands
from appliance.default_settings import write_default_settings
from appliance.egress import GUARDED_LOOP, install_command_guard
from appliance.errors import ApplianceError, InvalidRequestError
from appliance.gguf_info import read_gguf_info
from appliance.hardware import Hardware, detect_hardware, load_nvml
from appliance.planner import GIB, ModelSpec, Plan, make_plan, spec_from_model
from appliance.registry.keys import CreatedKey, Role
from appliance.registry.names import check_model_name
from appliance.registry.registry import Registry, open_registry
from appliance.settings import Settings, home_from_environment, load_settings
from appliance.tls import check_bind, server_context

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
models_app = typer.Typer(no_args_is_help=True, help="Register and list models.")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
register_store_commands(app, models_app)
register_unlock_commands(store_app)
register_version_commands(models_app)
register_model_settings_commands(models_app)
register_model_bundle_commands(models_app)
register_code_bundle_commands(models_app)
register_model_serving_commands(models_app)
register_residency_commands(models_app)
app.command()(doctor)


def _open() -> tuple[Settings, Registry]:
    """Settings and registry of APPLIANCE_HOME (creating both on first use)."""
    home = home_from_environment()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_default_settings(home)
    settings = load_settings(home)
    return settings, open_registry(settings.database_path)


@app.command()
def init() -> None:
    """Create the data directory, its settings file and its database (safe to run again)."""
    settings, _ = _open()
    typer.echo(f"home: {settings.home}\nsettings: {settings.home / 'settings.toml'}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what the key is for")],
    role: Annotated[Role, typer.Option(help="admin or user")] = Role.USER,
    quiet: Annotated[bool, typer.Option(help="print only the key")] = False,
) -> None:
    """Create a key and print it once; only its hash is kept."""
    _, registry = _open()
    created = registry.keys.create(name, role)
    registry.audit.record("keys.create", outcome="success", target=created.info.id, detail="cli")
    if quiet:
        typer.echo(created.secret)
    else:
        typer.echo(f"{created.info.id}  {role.value:5}  {name}\n{created.secret}\n(shown once: copy it now)")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    _, registry = _open()
    typer.echo(f"{'ID':12}  {'ROLE':5}  {'CREATED':19}  {'LAST USED':19}  {'STATE':7}  NAME")
    for key in registry.keys.list():
        last = key.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if key.last_used_at else "never"
        state = "revoked" if key.revoked_at else "active"
        created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{key.id:12}  {key.role.value:5}  {created:19}  {last:19}  {state:7}  {key.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id; it fails from the next request on."""
    _, registry = _open()
    registry.keys.revoke(key_id)
    registry.audit.record("keys.revoke", outcome="success", target=key_id, detail="cli")
    typer.echo(f"revoked {key_id}")


@models_app.command("add")
def models_add(
    path: Path,
    name: Annotated[str | None, typer.Option(help="model name (default: the file name)")] = None,
    alias: Annotated[list[str] | None, typer.Option(help="another name for the model; repeatable")] = None,
    chat_template: Annotated[
        Path | None, typer.Option(help="Jinja chat template to use instead of (or without) the GGUF's")
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="register the file as a new version of an existing model (then `models activate`)"),
    ] = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="register it without serving it (until `models enable`)")
    ] = False,
) -> None:
    """Read a GGUF file's header and register it (a new model, or a new version of one); a running gateway
    serves a new model within a second."""
    settings, registry = _open()
    settings.store.refuse_unsigned(path)
    model_name = name or path.stem.lower()
    try:  # before the header is read: reading it hashes the whole file
        check_model_name(model_name)
    except InvalidRequestError as error:
        hint = "" if name else " (the name comes from the file name; give one with --name)"
        raise InvalidRequestError(error.message + hint, param=error.param) from error
    info = read_gguf_info(path, allowed=settings.store.import_roots)
    template = chat_template.read_text(encoding="utf-8") if chat_template else None
    model = registry.models.add(
        path,
        info,
        name=model_name,
        aliases=tuple(alias or ()),
        chat_template_override=template,
        version=version,
        status="disabled" if disabled else "enabled",
    )
    registry.audit.record(
        "models.add", outcome="success", target=model.name, detail=f"version {model.version}: {model.path}"
    )
    if not model.active:
        typer.echo(
            f"registered {model.name} version {model.version} beside the serving one; "
            f"switch with `appliance models activate {model.name} --version {model.version}`"
        )
        return
    typer.echo(
        f"registered {model.name} ({info.architecture}, {info.quantization}, context {info.context_length}, "
        f"chat template: {'yes' if info.chat_template or template else 'no'})"
        + ("; disabled until `appliance models enable`" if model.status == "disabled" else "")
    )


@models_app.command("list")
def models_list() -> None:
    """List registered models."""
    _, registry = _open()
    typer.echo(
        f"{'NAME':20}  {'VERSION':7}  {'ALIASES':16}  {'ARCH':10}  {'QUANT':8}  {'SIZE MB':>8}  "
        f"{'CTX':>6}  STATUS"
    )
    for m in registry.models.list():
        aliases = ",".join(m.aliases) or "-"
        size = m.size_bytes / 1e6
        typer.echo(
            f"{m.name:20}  {m.version:7}  {aliases:16}  {m.architecture:10}  {m.quantization:8}  "
            f"{size:8.1f}  {m.context_length:6}  {m.status}"
        )


def _read_json(path: Path, kind: type[Any], what: str) -> Any:
    """Decode a JSON file into `kind`, or raise ApplianceError naming the file and the problem."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except OSError as error:
        raise ApplianceError(f"{path}: cannot read ({error.strerror})") from error
    except msgspec.MsgspecError as error:
        raise ApplianceError(f"{path}: not a valid {what} ({error})") from error


PLAN_COLUMNS = "{:20}  {:8}  {:30}  {:>2}  {:10}  {:>6}  {:>8}  {:>8}  {:4}  {}"


def _machine_lines(hardware: Hardware) -> list[str]:
    """The machine a plan was made for, one line per CPU and GPU."""
    cpu = hardware.cpu
    vector = "AVX-512" if cpu.avx512 else "AVX2" if cpu.avx2 else "no AVX2"
    ram = cpu.ram_total_mib / 1024
    lines = [f"CPU: {cpu.model}, {cpu.physical_cores} physical cores, {ram:.1f} GiB RAM, {vector}"]
    for gpu in hardware.gpus:
        major, minor = gpu.compute_capability
        mig = ""
        if gpu.mig_enabled:
            mig = f", MIG: {', '.join(m.profile for m in gpu.mig_instances) or 'no instances'}"
        memory = f"{gpu.memory_total_mib / 1024:.1f} GiB ({gpu.free_mib / 1024:.1f} free)"
        lines.append(f"GPU {gpu.index}: {gpu.name}, {memory}, compute capability {major}.{minor}{mig}")
    if hardware.gpus:
        lines.append(f"driver {hardware.driver_version or '?'}, CUDA {hardware.cuda_version or '?'}")
    return lines


def _plan_table(plan: Plan) -> str:
    """The plan as a table, preceded by the machine it was made for."""
    lines = [*_machine_lines(plan.hardware), *(f"note: {note}" for note in plan.notes), ""]
    header = ("MODEL", "ENGINE", "WHERE", "TP", "QUANT", "CTX", "NEED GiB", "HAVE GiB", "FITS", "WHY")
    lines.append(PLAN_COLUMNS.format(*header))
    for m in plan.models:
        lines.append(
            PLAN_COLUMNS.format(
                m.name,
                m.engine,
                ", ".join(m.devices) or "-",
                m.tensor_parallel_size or "-",
                m.quantization or "-",
                m.context_length,
                f"{m.needed_bytes / GIB:.1f}",
                f"{m.available_bytes / GIB:.1f}",
                "yes" if m.fits else "no",
                m.reason,
            )
        )
    if not plan.models:
        lines.append("(no models: register one with `appliance models add`, or pass --models FILE.json)")
    return "\n".join(lines)


@app.command()
def plan(
    hardware: Annotated[
        Path | None, typer.Option(help="plan for the machine this JSON file describes instead of this one")
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(help="plan for the models this JSON list describes instead of the registry's"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Show which engine serves each model, where, with how much memory, and why."""
    settings, registry = _open()
    if models is not None:
        specs: list[ModelSpec] = _read_json(models, list[ModelSpec], "model list")
    else:
        specs = [spec_from_model(m) for m in registry.models.enabled()]
    problem = ""  # sizing a machine to buy (--hardware): assume the GPU bundle (vLLM) will be on it
    if hardware is not None:
        made = make_plan(_read_json(hardware, Hardware, "hardware description"), specs, settings)
    else:
        from appliance.engines.vllm.launch import installed_vllm_version, vllm_problem

        problem = vllm_problem(installed_vllm_version())
        made = make_plan(detect_hardware(load_nvml()), specs, settings, vllm_problem=problem)
    if as_json:
        typer.echo(msgspec.json.format(msgspec.json.encode(made)).decode())
        return
    pinned = pinned_names(settings, registry.models.enabled()) if models is None else ()
    typer.echo(_plan_table(made) + "\n\n" + residency_text(made.hardware, specs, settings, pinned, problem))


def _print_examples(settings: Settings, key: str) -> None:
    base = f"{settings.server.url}/v1"
    typer.echo(
        f"""
Try it:
  curl {base}/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "default", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c 'from openai import OpenAI
client = OpenAI(base_url="{base}", api_key="{key}")
print(client.chat.completions.create(model="default",
      messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)'
"""
    )
    if settings.server.tls == "on":
        typer.echo(
            "HTTPS: clients verify the gateway with the CA that signed "
            f"{settings.server.tls_cert} (curl --cacert CA.pem; OpenAI(http_client=httpx.Client(verify=ctx)))"
            + ("; mutual TLS: each also needs a client certificate" if settings.server.tls_client_ca else "")
        )


@app.command()
def bootstrap(
    model: Annotated[Path, typer.Option(help="the embedded default GGUF model")],
    name: Annotated[str, typer.Option(help="its registry name")] = "smollm2-135m",
    alias: Annotated[str, typer.Option(help="the alias clients use")] = "default",
) -> None:
    """First-run set-up for development: home, default model, an admin and a user key (printed once)."""
    settings, registry = _open()
    if not any(m.name == name for m in registry.models.list()):
        settings.store.refuse_unsigned(model)
        info = read_gguf_info(model, allowed=settings.store.import_roots)
        registry.models.add(model, info, name=name, aliases=(alias,))
        typer.echo(f"registered {name} (alias {alias}) from {model}")
    user_key = "$APPLIANCE_KEY"
    if not registry.keys.list():
        admin: CreatedKey = registry.keys.create("admin (bootstrap)", Role.ADMIN)
        user: CreatedKey = registry.keys.create("user (bootstrap)", Role.USER)
        for created in (admin, user):
            registry.audit.record(
                "keys.create", outcome="success", target=created.info.id, detail="bootstrap"
            )
        user_key = user.secret
        typer.echo(
            f"\nAPI keys (shown once; only their hashes are stored):\n  admin: {admin.secret}\n"
            f"  user:  {user.secret}\n"
        )
    else:
        typer.echo(
            "keys exist already (they were printed on the first run; `appliance keys create` makes more)"
        )
    _print_examples(settings, user_key)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="override [server] host")] = None,
    port: Annotated[int | None, typer.Option(help="override [server] port")] = None,
) -> None:
    """Start the workers and serve the OpenAI API until Ctrl-C."""
    import uvicorn

    from api.app import create_app
    from api.drain import DrainingServer, exit_cleanly_on_sigterm, uvicorn_timeout_s
    from api.listen import BACKLOG, bound_host, inherited_socket

    settings, registry = _open()
    listen = settings.server if host is None else msgspec.structs.replace(settings.server, host=host)
    settings_file = settings.home / "settings.toml"
    # A socket handed down by systemd or the installer's holder (kept open across restarts): serve on it and
    # bind nothing; --host/--port and [server] host/port then only describe it.
    inherited = inherited_socket()
    check_bind(listen, bound_host(inherited) if inherited else listen.host, settings_file)
    tls = server_context(listen, settings_file)  # before any worker starts: a bad file is one line
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise
    gateway = create_app(settings, registry)
    drain_s = settings.server.drain_timeout_s
    config = uvicorn.Config(
        gateway,
        host=listen.host,
        port=port or listen.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=uvicorn_timeout_s(drain_s),
        loop=GUARDED_LOOP,  # uvloop connects below the `socket` module; this shows its peers to the guard
        ssl_certfile=listen.tls_cert if tls else None,
        ssl_keyfile=listen.tls_key if tls else None,
        ssl_ca_certs=listen.tls_client_ca or None,
        ssl_cert_reqs=tls.verify_mode if tls else ssl.CERT_NONE,
        backlog=BACKLOG,  # on an inherited socket, uvicorn's listen() must not shrink the holder's backlog
    )
    if tls is not None:
        # Serve the context checked above (TLS 1.2 or later), not a second one uvicorn builds from the files.
        config.load()
        config.ssl = tls
    server = DrainingServer(config, gateway.state["gateway"].drain, drain_s)
    exit_cleanly_on_sigterm()
    if inherited is not None:
        logging.getLogger("uvicorn.error").info("serving on the inherited socket %s", inherited.getsockname())
    # TLS is the server's (config.ssl wraps each accepted connection), so it holds on an inherited socket too.
    server.run(sockets=[inherited] if inherited is not None else None)


@app.command()
def tui(
    url: Annotated[
        str | None, typer.Option(help="the gateway (default: this home's [server] address)")
    ] = None,
    key_file: Annotated[Path | None, typer.Option(help="file holding an admin key")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            envvar=TLS_CA_VARIABLE,
            help="verify the gateway with this CA and the URL's host name (default: pin [server] tls_cert)",
        ),
    ] = None,
    tls_client_cert: Annotated[
        Path | None, typer.Option(envvar=TLS_CLIENT_CERT_VARIABLE, help="client certificate (mutual TLS)")
    ] = None,
    tls_client_key: Annotated[
        Path | None, typer.Option(envvar=TLS_CLIENT_KEY_VARIABLE, help="its private key")
    ] = None,
) -> None:
    """The admin console (keys also from APPLIANCE_ADMIN_KEY or a prompt); it uses the admin API only."""
    from tui.launch import ConsoleStartError, run_console

    settings = load_settings(home_from_environment())
    verify = gateway_tls(settings, tls_ca, tls_client_cert, tls_client_key)
    try:
        run_console(url or settings.server.url, key_file, verify=verify)
    except ConsoleStartError as error:
        raise ApplianceError(str(error)) from error


def main() -> None:
    """Console-script entry: an ApplianceError is one line on stderr and exit status 1, not a traceback."""
    try:
        install_command_guard(home_from_environment())  # before any command can touch a socket
        app()
    except ApplianceError as error:
        typer.echo(f"error: {error.message}", err=True)
        sys.exit(1)
