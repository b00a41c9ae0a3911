"""File lists, process assignment and the pre-flight check of input files."""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from utils.config import Process, load_config
from utils.dataset.inputs import (
    InputError,
    assign_processes,
    inspect_files,
    parse_root_url,
    read_filelist,
    uproot_options,
)
from utils.synthetic import synthetic_arrays, write_ntuple


def test_filelist_parsing(tmp_path):
    (tmp_path / "a.root").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.root").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# header\n\n{tmp_path / 'a.root'}\n  sub/b.root  \n"
                       "root://eosuser.cern.ch//eos/user/x/file.root\n\n")
    assert read_filelist(listing) == [str(tmp_path / "a.root"), str(tmp_path / "sub/b.root"),
                                      "root://eosuser.cern.ch//eos/user/x/file.root"]


def test_filelist_errors(tmp_path):
    with pytest.raises(InputError, match="nolist.txt does not exist"):
        read_filelist(tmp_path / "nolist.txt")
    listing = tmp_path / "list.txt"
    listing.write_text("# only comments\n\n")
    with pytest.raises(InputError, match="lists no input files"):
        read_filelist(listing)
    listing.write_text(f"{tmp_path}/missing_1.root\n")
    with pytest.raises(InputError, match="missing_1.root"):
        read_filelist(listing)
    (tmp_path / "a.root").write_bytes(b"x")
    listing.write_text("a.root\na.root\n")
    with pytest.raises(InputError, match="more than once"):
        read_filelist(listing)


def test_xrootd_urls(tmp_path):
    assert parse_root_url("root://eoscms.cern.ch//eos/cms/store/a.root") == (
        "eoscms.cern.ch", "/eos/cms/store/a.root")
    assert parse_root_url("root://xrootd-cms.infn.it:1094//store/b.root")[0] == \
        "xrootd-cms.infn.it:1094"
    with pytest.raises(InputError, match="malformed XRootD URL"):
        parse_root_url("root://eoscms.cern.ch/eos/a.root")
    listing = tmp_path / "remote.txt"
    listing.write_text("root://eoscms.cern.ch/store/x.root\n")
    with pytest.raises(InputError, match="malformed XRootD URL"):
        read_filelist(listing)
    url = "root://eoscms.cern.ch//eos/cms/store/TT_1.root"
    try:
        import fsspec_xrootd  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pip install fsspec-xrootd"):
            inspect_files([url], "Events", ["Jet_pt"])
    else:
        pytest.skip("fsspec-xrootd is installed; the missing-extra error cannot be shown")


def test_assign_processes():
    processes = (Process("TT", "*/TT_*.root"), Process("QCD", "*/QCD_*.root"))
    files = ["/d/TT_1.root", "/d/QCD_2.root", "/d/TT_0.root"]
    assert assign_processes(files, processes) == {"TT": ["/d/TT_1.root", "/d/TT_0.root"],
                                                  "QCD": ["/d/QCD_2.root"]}
    with pytest.raises(InputError, match=r"match no process pattern: /d/WJets.root"):
        assign_processes(files + ["/d/WJets.root"], processes)
    overlapping = (Process("TT", "*TT*"), Process("QCD", "*QCD*"))
    with pytest.raises(InputError,
                       match=r"more than one process: /d/TT_QCD.root \(matches TT, QCD"):
        assign_processes(["/d/TT_QCD.root"], overlapping)


def test_nanoaod_processes_match_names_not_parts_of_words():
    """The NanoAOD configs find TT, QCD and DY in any case at the start of a path part (CMS
    dataset directories, test file names), not inside a user's directory name."""
    processes = load_config("nanoaod_run3").processes
    store = "/store/mc/Run3Summer22NanoAODv12"
    files = {f"{store}/TTtoLNu2Q_TuneCP5_13p6TeV_powheg-pythia8/NANOAODSIM/0000/A1.root": "TT",
             f"{store}/QCD_PT-15to7000_TuneCP5_13p6TeV_pythia8/NANOAODSIM/0000/B2.root": "QCD",
             f"{store}/DYto2L-2Jets_MLL-50_TuneCP5_13p6TeV_amcatnloFXFX-pythia8/C3.root": "DY",
             "/eos/user/m/mattia/nano_tt_v12.root": "TT", "/eos/user/m/mattia/QCD_x.root": "QCD",
             "/data/ttbar.root": "TT", "/data/nano_dy.root": "DY"}
    assert assign_processes(list(files), processes) == {
        name: [f for f, p in files.items() if p == name] for name in ("TT", "QCD", "DY")}
    with pytest.raises(InputError, match="match no process pattern: /eos/user/m/mattia/WJets"):
        assign_processes(["/eos/user/m/mattia/WJets_sample.root"], processes)


def test_inspect_files(tmp_path, offline_config):
    good = write_ntuple(tmp_path / "good.root", offline_config.tree_name,
                        synthetic_arrays(offline_config, 20))
    arrays = synthetic_arrays(offline_config, 20)
    del arrays["sv_mass"]
    partial = write_ntuple(tmp_path / "partial.root", offline_config.tree_name, arrays)
    other_tree = write_ntuple(tmp_path / "other.root", "events", {"x": np.ones(3)})
    empty = write_ntuple(tmp_path / "empty.root", offline_config.tree_name,
                         {b: np.zeros(0, np.float32) for b in offline_config.branches})
    garbage = tmp_path / "garbage.root"
    garbage.write_bytes(b"")
    assert inspect_files([str(good)], offline_config.tree_name, offline_config.branches) == {
        str(good): 20}
    with pytest.raises(InputError) as err:
        inspect_files([str(p) for p in (good, partial, other_tree, empty, garbage)],
                      offline_config.tree_name, offline_config.branches)
    message = str(err.value)
    assert "4 input file problem(s)" in message
    assert f"{partial}: missing branch(es) ['sv_mass']" in message
    assert f"{other_tree}: no tree 'deepntuplizer/tree'" in message
    assert f"{empty}: tree 'deepntuplizer/tree' has no entries" in message
    assert f"{garbage}: cannot be read as a ROOT file" in message


def test_uproot_options_read_local_files_with_the_file_source(tmp_path):
    local = uproot_options(["/data/TT_0.root", "rel/QCD_1.root"])
    assert local == {"handler": uproot.source.file.MultithreadedFileSource}
    # any URL: uproot's default sources (per scheme) for all
    assert uproot_options(["/data/TT_0.root", "root://eoscms.cern.ch//eos/TT_1.root"]) == {}
    assert uproot_options(["/data/TT_0.root", "file:///data/TT_1.root"]) == {}
    # and file:// inputs are read (the file source itself cannot open them)
    path = write_ntuple(tmp_path / "TT_0.root", "tree", {"jet_pt": np.arange(5.0)})
    url = f"file://{path}"
    assert inspect_files([url], "tree", ["jet_pt"]) == {url: 5}
