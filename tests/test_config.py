"""deploy.toml parsing and validation (fabdeploy.config): pure, no SSH."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fabdeploy.config import (CONFIG_ENV, SCHEMA, Config, all_sections, find_config_path, load_config, parse_config)
from fabdeploy.errors import ConfigError
from fabdeploy.hosts.layout import Layout

MINIMAL = {
    "project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application"},
    "paths": {"deploy_to": "/srv/shop"},
}

MINIMAL_TOML = """\
[project]
name = "shop"
django_settings = "shop.settings"
wsgi = "shop.wsgi:application"

[paths]
deploy_to = "/srv/shop"
"""


def raw(**sections) -> dict:
    """MINIMAL with the given sections merged in (a section given as None is removed)."""
    data = copy.deepcopy(MINIMAL)
    for section, values in sections.items():
        if values is None:
            data.pop(section, None)
        else:
            data.setdefault(section, {}).update(values)
    return data


def config_error(data: dict, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# --- a valid config -------------------------------------------------------------------------------------------

def test_minimal_config_gets_every_default():
    cfg = parse_config(copy.deepcopy(MINIMAL))
    assert isinstance(cfg, Config)
    assert cfg.project.name == "shop"
    assert cfg.project.source == "."
    assert cfg.project.revision == "HEAD"
    assert cfg.project.requirements == "requirements.txt"
    assert cfg.project.manage == "manage.py"
    assert cfg.project.python == "python3"
    assert cfg.project.hosts == [] and cfg.project.exclude == []
    assert cfg.django.env == {} and cfg.django.allowed_hosts == []
    assert (cfg.django.static_url, cfg.django.media_url) == ("/static/", "/media/")
    assert cfg.django.migrate is cfg.django.collectstatic is cfg.django.check_deploy is True
    assert cfg.paths.deploy_to == "/srv/shop"
    assert cfg.paths.keep_releases == 5
    assert cfg.paths.shared_dirs == ["media"]
    assert (cfg.uwsgi.processes, cfg.uwsgi.threads, cfg.uwsgi.harakiri) == (4, 2, 30)
    assert (cfg.uwsgi.max_requests, cfg.uwsgi.buffer_size, cfg.uwsgi.package) == (5000, 32768, "uwsgi")
    assert cfg.nginx.server_name == "_" and cfg.nginx.listen == 80
    assert cfg.nginx.client_max_body_size == "75M" and cfg.nginx.layout == "auto"
    assert cfg.pip.index_url == "" and cfg.pip.wheelhouse is False
    assert cfg.ssh.strict_host_keys is True and cfg.ssh.connect_timeout == 15
    assert cfg.hooks.before_django == [] and cfg.hooks.after_cleanup == []
    assert cfg.shared == "/srv/shop/shared"


def test_every_schema_section_and_key_is_present_after_parsing():
    cfg = parse_config(copy.deepcopy(MINIMAL))
    for section, keys in all_sections().items():
        assert set(cfg.data[section]) == set(keys), section


def test_mutable_defaults_are_not_shared_between_configs():
    a = parse_config(copy.deepcopy(MINIMAL))
    a.paths.shared_dirs.append("uploads")
    a.django.env["X"] = "1"
    b = parse_config(copy.deepcopy(MINIMAL))
    assert b.paths.shared_dirs == ["media"]
    assert b.django.env == {}
    assert SCHEMA["paths"]["shared_dirs"].default == ["media"]


def test_given_values_override_defaults():
    cfg = parse_config(raw(uwsgi={"processes": 8, "options": {"lazy-apps": "true", "cheaper": 2}},
                           nginx={"listen": "127.0.0.1:8080", "server_name": "example.com www.example.com"},
                           paths={"keep_releases": 2, "shared_dirs": ["media", "uploads/private"]}))
    assert cfg.uwsgi.processes == 8
    assert cfg.uwsgi.options == {"lazy-apps": "true", "cheaper": 2}
    assert cfg.nginx.listen == "127.0.0.1:8080"
    assert cfg.server_names == ["example.com", "www.example.com"]
    assert cfg.paths.keep_releases == 2 and cfg.paths.shared_dirs == ["media", "uploads/private"]


def test_unknown_section_attribute_is_an_attribute_error():
    cfg = parse_config(copy.deepcopy(MINIMAL))
    with pytest.raises(AttributeError):
        cfg.nosuchsection  # noqa: B018


# --- unknown names ------------------------------------------------------------------------------------------

def test_unknown_key_names_section_dot_key_and_suggests_the_close_match():
    message = config_error(raw(uwsgi={"procesess": 4}))
    assert "unknown key uwsgi.procesess" in message
    assert "did you mean 'processes'?" in message


def test_unknown_hook_key_suggests_the_real_hook_name():
    message = config_error(raw(hooks={"before_djang": ["true"]}))
    assert "hooks.before_djang" in message and "'before_django'" in message


def test_hook_may_be_a_table_per_role():
    cfg = parse_config(raw(hooks={"after_restart": {"lb": ["echo lb"], "app": ["echo a", "echo b"]},
                                  "before_setup": {"lb": []}, "after_cleanup": ["echo all"]}))
    assert cfg.hooks.after_restart == {"lb": ["echo lb"], "app": ["echo a", "echo b"]}
    assert cfg.hooks.before_setup == {"lb": []}
    assert cfg.hooks.after_cleanup == ["echo all"]


@pytest.mark.parametrize("value, expected", [
    ({"web": ["echo x"]}, "hooks.after_restart has an unknown role 'web' (roles are: app, lb)"),
    ({"lb": "echo x"}, "hooks.after_restart lb must be a list of shell commands"),
    ({"app": [3]}, "hooks.after_restart app item 1 (3) must be a string"),
    ("echo x", "hooks.after_restart must be a list of shell commands, or a table of them per role (app, lb)"),
    (3, "hooks.after_restart must be a list of shell commands, or a table of them per role (app, lb)"),
])
def test_bad_hook_table_is_one_line_naming_the_key(value, expected):
    message = config_error(raw(hooks={"after_restart": value}))  # asserts one line
    assert expected in message, message


def test_unknown_key_far_from_everything_has_no_suggestion():
    message = config_error(raw(nginx={"zzzzzzzz": 1}))
    assert "unknown key nginx.zzzzzzzz" in message
    assert "did you mean" not in message


def test_unknown_section_is_named_and_suggested():
    message = config_error(raw(uwsgy={"processes": 2}))
    assert "unknown section [uwsgy]" in message
    assert "did you mean 'uwsgi'?" in message


def test_section_that_is_not_a_table():
    message = config_error(raw(nginx=None) | {"nginx": "example.com"})
    assert "nginx must be a table" in message


# --- types and values ---------------------------------------------------------------------------------------

def test_wrong_type_names_the_key_and_the_value():
    message = config_error(raw(uwsgi={"processes": "4"}))
    assert message.startswith("uwsgi.processes must be an integer")
    assert "(got '4')" in message


@pytest.mark.parametrize("section,key,value,expect", [
    ("uwsgi", "processes", True, "uwsgi.processes must be an integer"),
    ("uwsgi", "processes", 0, "uwsgi.processes must be between 1 and 1024"),
    ("paths", "keep_releases", 0, "paths.keep_releases must be between 1 and 1000"),
    ("django", "migrate", "yes", "django.migrate must be true or false"),
    ("nginx", "listen", 70000, "nginx.listen must be a port between 1 and 65535"),
    ("nginx", "listen", "eighty", "nginx.listen must be a port number"),
    ("nginx", "server_name", "", "nginx.server_name must be server names"),
    ("nginx", "server_name", "a.com;b.com", "nginx.server_name must be server names"),
    ("nginx", "layout", "apache", "nginx.layout must be"),
    ("nginx", "client_max_body_size", "75 MB", "nginx.client_max_body_size must be a size"),
    ("django", "static_url", "static", "django.static_url must be a URL path"),
    ("project", "hosts", "web1", "project.hosts must be a list of strings"),
    ("project", "hosts", ["web1", "bad host"], "project.hosts item 2 ('bad host')"),
    ("project", "name", "my app", "project.name must be letters"),
    ("project", "name", "", "project.name must be letters"),
    ("project", "wsgi", "shop.wsgi:app:x", "project.wsgi must be"),
    ("project", "requirements", "/abs/requirements.txt", "project.requirements must be a relative path"),
    ("pip", "index_url", "ftp://mirror/simple", "pip.index_url must be an http(s) or file URL"),
    ("uwsgi", "options", {"Bad_Name": 1}, "uwsgi.options has an invalid option name 'Bad_Name'"),
    ("uwsgi", "options", {"x": "a\nb"}, "uwsgi.options x must be a single line"),
    ("django", "env", {"1BAD": "x"}, "django.env has an invalid variable name '1BAD'"),
    ("django", "env", {"N": 3}, "django.env N must be a string"),
])
def test_invalid_values_are_named(section, key, value, expect):
    assert expect in config_error(raw(**{section: {key: value}}))


@pytest.mark.parametrize("missing,expect", [
    ("name", "missing required key project.name"),
    ("django_settings", "missing required key project.django_settings"),
    ("wsgi", "missing required key project.wsgi"),
])
def test_missing_required_project_key_is_named(missing, expect):
    data = raw()
    del data["project"][missing]
    assert config_error(data) == expect


def test_missing_deploy_to_is_named():
    assert config_error(raw(paths=None)) == "missing required key paths.deploy_to"


def test_message_is_prefixed_with_the_config_path(tmp_path):
    path = tmp_path / "deploy.toml"
    assert config_error(raw(paths=None), path) == f"{path}: missing required key paths.deploy_to"


# --- paths --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("deploy_to", ["srv/shop", "shop", "~/shop", "/srv/my shop", "/srv/$HOME", "/srv/`x`"])
def test_deploy_to_must_be_absolute_and_plain(deploy_to):
    assert "paths.deploy_to must be an absolute path of plain characters" in config_error(
        raw(paths={"deploy_to": deploy_to}))


@pytest.mark.parametrize("deploy_to", ["/", "//", "/srv/../etc", "/srv/shop/..", "/srv/./shop", "/srv/shop/."])
def test_deploy_to_root_or_dot_segments_rejected(deploy_to):
    assert "paths.deploy_to must be a real directory below /" in config_error(raw(paths={"deploy_to": deploy_to}))


@pytest.mark.parametrize("deploy_to", ["/srv/shop/", "/srv//shop"])
def test_deploy_to_is_normalised_or_rejected(deploy_to):
    try:
        cfg = parse_config(raw(paths={"deploy_to": deploy_to}))
    except ConfigError:
        return
    assert Layout(cfg.paths.deploy_to).release("20260101T000000Z-abcdef0") == \
        "/srv/shop/releases/20260101T000000Z-abcdef0"


@pytest.mark.parametrize("dirs", [["../etc"], ["media/../../etc"], [".."]])
def test_dotdot_in_shared_dirs_rejected(dirs):
    message = config_error(raw(paths={"shared_dirs": dirs}))
    assert "must stay inside its directory (no '..')" in message


def test_empty_requirements_needs_pip_packages():
    assert config_error(raw(project={"requirements": ""})) == \
        "project.requirements is empty and pip.packages lists nothing to install"
    cfg = parse_config(raw(project={"requirements": ""}, pip={"packages": ["Django>=5.2"]}))
    assert cfg.project.requirements == "" and cfg.pip.packages == ["Django>=5.2"]


def test_dotdot_in_requirements_and_manage_rejected():
    assert "no '..'" in config_error(raw(project={"requirements": "../requirements.txt"}))
    assert "no '..'" in config_error(raw(project={"manage": "src/../../manage.py"}))


def test_absolute_shared_dir_rejected():
    assert "paths.shared_dirs item 1 ('/etc') must be a relative path" in config_error(
        raw(paths={"shared_dirs": ["/etc"]}))


# --- django.env ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b"])
def test_env_value_with_newline_rejected(value):
    assert "django.env DB_HOST must be a single line" in config_error(raw(django={"env": {"DB_HOST": value}}))


def test_env_value_with_command_substitution_rejected():
    message = config_error(raw(django={"env": {"DB_HOST": "x$(reboot)"}}))
    assert "django.env DB_HOST must not contain '$('" in message


def test_env_values_with_other_shell_metacharacters_are_accepted():
    env = {"A": "x; rm -rf /", "B": "`reboot`", "C": "it's \"quoted\" \\ $HOME ${X}", "D": "100%"}
    cfg = parse_config(raw(django={"env": env}))
    assert cfg.django.env == env


def test_env_error_does_not_print_secret_values():
    message = config_error(raw(django={"env": {"DB_PASSWORD": "hunter2-very-secret", "BAD": "x$(y)"}}))
    assert "django.env BAD" in message
    assert "hunter2-very-secret" not in message


# --- derived values -----------------------------------------------------------------------------------------

def test_allowed_hosts_default_to_server_name_words_without_underscore():
    cfg = parse_config(raw(nginx={"server_name": "example.com _ www.example.com ~^api[0-9]*\\.example\\.com$"}))
    assert cfg.allowed_hosts == ["example.com", "www.example.com"]


@pytest.mark.parametrize("name", ["~^(www\\.)?example\\.com$", "~^api\\d+\\.example\\.com$"])
def test_regex_server_names_are_accepted(name):
    cfg = parse_config(raw(nginx={"server_name": f"example.com {name}"}))
    assert cfg.server_names == ["example.com", name]
    assert cfg.allowed_hosts == ["example.com"]


def test_allowed_hosts_default_to_localhost_for_catch_all():
    assert parse_config(copy.deepcopy(MINIMAL)).allowed_hosts == ["localhost"]


def test_explicit_allowed_hosts_win():
    cfg = parse_config(raw(nginx={"server_name": "example.com"}, django={"allowed_hosts": [".example.org"]}))
    assert cfg.allowed_hosts == [".example.org"]


def test_allowed_hosts_translate_nginx_wildcards():
    from django.http.request import validate_host
    cfg = parse_config(raw(nginx={"server_name": "example.com *.example.com"}))
    assert validate_host("shop.example.com", cfg.allowed_hosts)


def test_secret_values_are_every_env_value_of_four_characters_or_more_whatever_its_name():
    env = {"API_TOKEN": "tok-123", "DATABASE_URL": "postgres://app:pw-456@db/app", "SENTRY": "s-789",
           "AWS_ACCESS_KEY": "k-1", "DEBUG": "True", "DEBUG_LEVEL": "3", "EMPTY_PASSWORD": "", "REGION": "eu-1"}
    cfg = parse_config(raw(django={"env": env}))
    assert sorted(cfg.secret_values()) == sorted(["tok-123", "postgres://app:pw-456@db/app", "s-789", "eu-1"])


def test_secret_values_include_the_userinfo_of_the_index_url():
    cfg = parse_config(raw(pip={"index_url": "https://ci:t%40ken-99@mirror.example/simple"}))
    assert sorted(cfg.secret_values()) == sorted(["ci:t%40ken-99", "t%40ken-99", "t@ken-99"])
    assert parse_config(raw(pip={"index_url": "https://mirror.example/simple"})).secret_values() == []


def test_source_dir_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "app").mkdir()
    cfg = parse_config(raw(project={"source": "app"}), tmp_path / "deploy.toml")
    assert cfg.source_dir == (tmp_path / "app").resolve()


def test_source_dir_without_path_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_config(copy.deepcopy(MINIMAL)).source_dir == tmp_path.resolve()


# --- files --------------------------------------------------------------------------------------------------

def test_load_config_reads_explicit_path(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    path = tmp_path / "prod.toml"
    path.write_text(MINIMAL_TOML + '\n[uwsgi]\nprocesses = 7\n')
    cfg = load_config(str(path))
    assert cfg.path == path and cfg.uwsgi.processes == 7
    assert cfg.source_dir == tmp_path.resolve()


def test_env_var_is_honoured(tmp_path, monkeypatch):
    path = tmp_path / "staging.toml"
    path.write_text(MINIMAL_TOML.replace("/srv/shop", "/srv/staging"))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.chdir(tmp_path)
    assert find_config_path() == path
    assert load_config().paths.deploy_to == "/srv/staging"


def test_explicit_path_beats_env_var(tmp_path, monkeypatch):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(MINIMAL_TOML.replace("/srv/shop", "/srv/a"))
    b.write_text(MINIMAL_TOML.replace("/srv/shop", "/srv/b"))
    monkeypatch.setenv(CONFIG_ENV, str(a))
    assert load_config(str(b)).paths.deploy_to == "/srv/b"


def test_default_is_deploy_toml_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy.toml").write_text(MINIMAL_TOML)
    assert find_config_path() == Path("deploy.toml")
    assert load_config().project.name == "shop"


@pytest.mark.parametrize("how", ["explicit", "env", "default"])
def test_missing_file_message(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    missing = str(tmp_path / "nope.toml")
    if how == "env":
        monkeypatch.setenv(CONFIG_ENV, missing)
    with pytest.raises(ConfigError) as info:
        load_config(missing if how == "explicit" else None)
    message = str(info.value)
    assert "\n" not in message
    expected_name = "deploy.toml" if how == "default" else missing
    expected_how = {"explicit": "--config", "env": CONFIG_ENV, "default": "default"}[how]
    assert message == (f"config file {expected_name} not found ({expected_how}); "
                       "write one with `fabdeploy init` (or `fabdeploy example-config`: the "
                       "deploy.example.toml reference)")


def test_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        find_config_path(str(tmp_path))


def test_invalid_toml_is_one_line_with_the_path(tmp_path):
    path = tmp_path / "deploy.toml"
    path.write_text('[project]\nname = "shop"\nwsgi = \n[paths\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message
    assert "\n" not in message


def test_validation_error_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "deploy.toml"
    path.write_text(MINIMAL_TOML + "\n[uwsgi]\nprocesses = \"4\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: uwsgi.processes must be an integer")


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "deploy.toml"
    path.write_bytes(MINIMAL_TOML.replace("shop", "sh\xf6p", 1).encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(str(path))


BAD_CONFIGS = [
    raw(uwsgi={"procesess": 4}),
    raw(djnago={}),
    raw(uwsgi={"processes": "4"}),
    raw(paths=None),
    raw(paths={"deploy_to": "relative"}),
    raw(paths={"deploy_to": "/"}),
    raw(paths={"shared_dirs": ["../x"]}),
    raw(django={"env": {"K": "a\nb"}}),
    raw(django={"env": {"K": "$(x)"}}),
    raw(project={"hosts": ["a\nb"]}),
    raw(uwsgi={"options": {"x": "a\nb"}}),
    raw(hooks={"before_code": "not a list"}),
]


@pytest.mark.parametrize("data", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_every_message_is_a_single_line(data):
    config_error(data)  # asserts there is no newline


def test_unknown_quoted_key_with_newline_is_still_one_line():
    config_error(raw(uwsgi={"proc\nesses": 4}))
