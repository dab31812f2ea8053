"""Project.at: where a project keeps its chains, cassettes and datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from toolkit.errors import UsageError
from toolkit.project import Project


def pyproject(root: Path, text: str) -> Path:
    path = root / "pyproject.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_pyproject(tmp_path: Path) -> None:
    project = Project.at(tmp_path)
    assert project.root == tmp_path.resolve()
    assert project.chains_dir == tmp_path.resolve() / "chains"
    assert project.cassettes_dir == tmp_path.resolve() / "cassettes"
    assert project.datasets_dir == tmp_path.resolve() / "datasets"


def test_defaults_with_a_pyproject_that_has_no_chainkit_table(tmp_path: Path) -> None:
    pyproject(tmp_path, '[project]\nname = "x"\n\n[tool.ruff]\nline-length = 100\n')
    project = Project.at(tmp_path)
    assert (project.chains_dir, project.cassettes_dir, project.datasets_dir) == (
        tmp_path / "chains",
        tmp_path / "cassettes",
        tmp_path / "datasets",
    )


def test_this_repository_uses_the_defaults() -> None:
    project = Project.at(ROOT)
    assert project.chains_dir == ROOT / "chains"
    assert project.cassettes_dir == ROOT / "cassettes"
    assert project.cassette_for("qa").is_file()


def test_the_root_is_resolved_to_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path)
    project = Project.at("proj")
    assert project.root.is_absolute()
    assert project.root == (tmp_path / "proj").resolve()
    assert Project.at().root == tmp_path.resolve()  # the default is the current directory


def test_tool_chainkit_moves_every_folder(tmp_path: Path) -> None:
    pyproject(
        tmp_path,
        '[tool.chainkit]\nchains = "src/chains"\ncassettes = "recordings"\ndatasets = "data/eval"\n',
    )
    project = Project.at(tmp_path)
    assert project.chains_dir == tmp_path / "src" / "chains"
    assert project.cassettes_dir == tmp_path / "recordings"
    assert project.datasets_dir == tmp_path / "data" / "eval"


def test_tool_chainkit_may_move_some_folders_and_keep_the_others(tmp_path: Path) -> None:
    pyproject(tmp_path, '[tool.chainkit]\ncassettes = "recordings"\n')
    project = Project.at(tmp_path)
    assert project.chains_dir == tmp_path / "chains"
    assert project.cassettes_dir == tmp_path / "recordings"
    assert project.datasets_dir == tmp_path / "datasets"


def test_cassette_for_names_a_json_file_in_the_cassettes_dir(tmp_path: Path) -> None:
    pyproject(tmp_path, '[tool.chainkit]\ncassettes = "recordings"\n')
    project = Project.at(tmp_path)
    assert project.cassette_for("qa") == tmp_path / "recordings" / "qa.json"
    assert project.cassette_for("stream_story") == tmp_path / "recordings" / "stream_story.json"


def test_invalid_toml_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    path = pyproject(tmp_path, '[tool.chainkit\nchains = "x"\n')
    with pytest.raises(UsageError, match="not valid TOML") as caught:
        Project.at(tmp_path)
    assert str(path.resolve()) in str(caught.value)


def test_a_missing_project_directory_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError, match="does not exist") as caught:
        Project.at(missing)
    assert str(missing) in str(caught.value)
    assert "--project" in str(caught.value)


def test_a_file_as_the_project_directory_is_a_usage_error(tmp_path: Path) -> None:
    file = tmp_path / "pyproject.toml"
    file.write_text("", encoding="utf-8")
    with pytest.raises(UsageError):
        Project.at(file)


def test_a_pyproject_that_is_not_utf8_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_bytes(b'[tool.chainkit]\nchains = "\xff"\n')
    with pytest.raises(UsageError) as caught:
        Project.at(tmp_path)
    assert str(path) in str(caught.value)


def test_a_tool_chainkit_that_is_not_a_table_is_a_usage_error(tmp_path: Path) -> None:
    path = pyproject(tmp_path, '[tool]\nchainkit = "src/chains"\n')
    with pytest.raises(UsageError) as caught:
        Project.at(tmp_path)
    assert str(path) in str(caught.value)


def test_a_folder_setting_that_is_not_a_string_is_a_usage_error(tmp_path: Path) -> None:
    pyproject(tmp_path, "[tool.chainkit]\nchains = 3\n")
    with pytest.raises(UsageError, match="chains"):
        Project.at(tmp_path)
