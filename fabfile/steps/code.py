"""The code phase: unpack the release, write its settings module, environment file and secret key."""
from __future__ import annotations

from fabdeploy import database
from fabdeploy.appserver import warm
from fabdeploy.ops.manage import wrapper as manage_wrapper
from fabdeploy.config import Config
from fabdeploy.front import tls
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.local.render import render
from fabdeploy.model import Release
from fabdeploy.remote.markers import fail, note
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import new_file, q, write_file
from fabdeploy.steps import app_user
from fabdeploy.steps.static import seed_static


def env_file_text(cfg: Config) -> str:
    """shared/config/app.env: the [django] env and the resolved [secrets] (but SECRET_KEY, which is
    shared/secret_key) for manage.py, the hooks and the app (the generated settings read it); sh syntax,
    values quoted."""
    env = {**cfg.django.env, **{k: v for k, v in cfg.secret_env.items() if k != "SECRET_KEY"}}
    return "".join(f"{k}={q(v)}\n" for k, v in sorted(env.items()))


def env_file_names(cfg: Config) -> set[str]:
    """Every name app.env may set (env_file_text's and the host-managed ones)."""
    return {*cfg.django.env, *(k for k in cfg.secret_env if k != "SECRET_KEY"), *host_managed(cfg)}


def host_managed(cfg: Config) -> dict[str, str]:
    """Names of app.env the deploy writes from values only the host has (password files fab provision made
    there: never sent, never printed, never known here): name -> the state `fab secrets` shows."""
    out = {name: "set on the host (database password)" for name in database.env_names(cfg)}
    if cfg.cache.redis:
        out["REDIS_URL"] = "set on the host (cache.redis)"
    return out


def env_file_lines(cfg: Config, path: str) -> list[str]:
    """Write env_file_text to `path` atomically; DATABASE_URL (a database server) and REDIS_URL ([cache]
    redis) are added on the host to the temporary file, from the password files there, before the rename."""
    lines = write_file(path, env_file_text(cfg), mode="0600")
    tmp = path + ".fabdeploy-tmp"
    extra = list(database.url_lines(cfg, tmp))
    if cfg.cache.redis:
        from fabdeploy.provision import redis
        extra += redis.env_lines(cfg, tmp)
    return [*lines[:-1], *extra, lines[-1]]


def settings_overlay(cfg: Config, release_id: str) -> str:
    """The generated production settings module of a release (templates/settings.py.j2): the one place that
    says what the overlay gets (deploy, plan and the "already live" fingerprint all render it here)."""
    return render("settings.py.j2", release_id=release_id, django_settings=cfg.project.django_settings,
                  shared=Layout(cfg.paths.deploy_to).shared, allowed_hosts=cfg.allowed_hosts,
                  static_url=cfg.django.static_url, media_url=cfg.django.media_url,
                  tls=tls.django_context(cfg), database_engine=database.engine(cfg),
                  cache=cfg.cache, name=cfg.project.name)


# A new SECRET_KEY as Python's secrets.token_urlsafe(50) makes it (50 random bytes, URL-safe base64 without
# padding: 67 characters), without starting a Python on the host.
NEW_KEY_SH = "printf '%s\\n' \"$(head -c 50 /dev/urandom | base64 | tr -d '\\n=' | tr '+/' '-_')\""


def code(cfg: Config, rel: Release, secret_key: str | None = None, passwords: dict | None = None) -> Phase:
    """Unpack the uploaded archive (stdin) into releases/<id>, add the settings module, link shared dirs.
    shared/secret_key: `secret_key` when given (the fleet's one key; mask it in displays), else the host's
    own, generated on its first deploy. `passwords`: file name -> value read from the fleet's db host,
    written into shared/config (0600) before app.env is composed from them (mask them in displays)."""
    lay = Layout(cfg.paths.deploy_to)
    R, T = lay.release(rel.id), lay.staging(rel.id)
    settings = settings_overlay(cfg, rel.id)
    lines = [
        f"[ ! -e {q(R)} ] || {fail(f'release {rel.id} already exists on the host')}",
        f"rm -rf {q(T)}",
        f"mkdir -p {q(T)}",
        f"tar -xzf - -C {q(T)}",
        f"[ -d {q(T + '/release')} ] || {fail('the uploaded archive is incomplete')}",
        f"mv {q(T + '/release')} {q(R)}",
        f"[ -f {q(R + '/' + cfg.project.manage)} ] || {fail(f'{cfg.project.manage} not found in the release (project.manage)')}",
        f"mkdir -p {q(R + '/.fabdeploy')}",
        "umask 022",  # (the release's own files, written with printf: no process each)
        new_file(f"{R}/.fabdeploy/release.json", rel.metadata()),
        new_file(f"{R}/.fabdeploy/venv", rel.venv_hash),
        new_file(f"{R}/{SETTINGS_MODULE}.py", settings),
        *warm.release_lines(cfg, rel.id),
    ]
    lines += seed_static(cfg, rel.id)
    for d in cfg.paths.shared_dirs:
        target, link = f"{lay.shared}/{d}", f"{R}/{d}"
        lines += [f"mkdir -p {q(target)}", f"rm -rf {q(link)}", f'mkdir -p "$(dirname {q(link)})"',
                  f"ln -s {q(target)} {q(link)}"]
    if secret_key:  # a host without a key gets it now; one whose key differs (adopt) at the switch
        staged = f"{T}/secret_key"
        lines += [*write_file(staged, secret_key, mode="0600"),
                  f"if [ -s {q(lay.secret_key)} ]; then {note('secret key staged (installed at the switch)')}; "
                  f"else mv -f {q(staged)} {q(lay.secret_key)}; {note('secret key installed (the fleet key)')}; fi"]
    lines += [
        f"if [ ! -s {q(lay.secret_key)} ]; then "
        f"(umask 077; {NEW_KEY_SH} > {q(lay.secret_key + '.tmp')}) && mv {q(lay.secret_key + '.tmp')} {q(lay.secret_key)}; "
        + note("secret key generated") + "; fi",
        *[ln for name, value in sorted((passwords or {}).items())
          for ln in write_file(f"{lay.config}/{name}", value, mode="0600")],
        *env_file_lines(cfg, lay.env_file),
        *app_user.key_lines(cfg),
        f"mkdir -p {q(lay.bin)}",
        *write_file(lay.manage, manage_wrapper(cfg), mode="0755"),
    ]
    return Phase("code", lines)
