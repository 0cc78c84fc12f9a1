"""Video codec, LeRobot writer and reader: round trip, schema, determinism, errors, resumability."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_helpers import INSTRUCTIONS, LENGTHS, make_episode, psnr, write_dataset
from persistworld_env.constants import CAMERAS, image_key
from persistworld_env.data import DatasetError, LeRobotEpisodes, LeRobotWriter, decode_video, encode_video
from persistworld_env.data import layout


# ------------------------------------------------------------------ video
def test_video_round_trip_and_errors(tmp_path, episodes):
    frames = episodes[0].frames["wrist_left"]
    path = tmp_path / "v.mp4"
    encode_video(frames, path)
    out = decode_video(path, expected_frames=len(frames))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert psnr(out, frames) > 35
    assert np.array_equal(decode_video(path, step=3), out[::3])

    with pytest.raises(DatasetError, match="fewer|index says"):
        decode_video(path, expected_frames=len(frames) + 5)
    with pytest.raises(DatasetError, match="missing video"):
        decode_video(tmp_path / "nope.mp4")
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cut.mp4"):
        decode_video(cut, expected_frames=len(frames))


# ------------------------------------------------------------------ round trip
def test_write_read_round_trip(dataset, episodes):
    reader = LeRobotEpisodes(dataset)
    assert reader.episode_indices == list(range(len(episodes)))
    for i, ep in enumerate(episodes):
        rec = reader.load_record(i)
        assert rec.length == LENGTHS[i] and rec.instruction == INSTRUCTIONS[i] == reader.instruction(i)
        assert rec.success == ep.success and rec.seed == ep.seed and rec.extra == ep.extra
        for name in ("cartesian_position", "gripper_position", "joint_position", "action_cartesian_position",
                     "action_gripper_position", "action_joint_position"):
            np.testing.assert_array_equal(getattr(rec, name), getattr(ep, name))
        np.testing.assert_array_equal(reader.load_pose(i), ep.pose)
        for cam in CAMERAS:
            assert psnr(rec.frames[cam], ep.frames[cam]) > 35, cam
            assert np.abs(rec.frames[cam].astype(int) - ep.frames[cam]).mean() < 2.0


def test_stats_match_numpy(dataset, episodes):
    stats = json.loads((dataset / "meta/stats.json").read_text())
    cart = np.concatenate([e.cartesian_position for e in episodes]).astype(np.float64)
    s = stats["observation.state.cartesian_position"]
    np.testing.assert_allclose(s["q01"], np.percentile(cart, 1, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s["q99"], np.percentile(cart, 99, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s["mean"], cart.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s["std"], cart.std(0), rtol=1e-5)
    np.testing.assert_allclose(s["min"], cart.min(0))
    assert s["count"] == [sum(LENGTHS)]
    assert stats["index"]["max"] == [sum(LENGTHS) - 1]
    assert "language_instruction" not in stats
    img = stats[image_key("wrist_left")]
    assert np.asarray(img["mean"]).shape == (3, 1, 1)
    wrist = np.concatenate([e.frames["wrist_left"] for e in episodes]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(np.asarray(img["mean"]).ravel(), wrist.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(img["std"]).ravel(), wrist.std(0), atol=1e-6)


# ------------------------------------------------------------------ schema
def test_schema_uses_droid_names(dataset, episodes):
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 15 and info["robot_type"] == "franka"
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["video_path"] == "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"], info["total_videos"],
            info["total_chunks"]) == (4, sum(LENGTHS), 3, 12, 1)
    feats = info["features"]
    for cam in CAMERAS:
        ft = feats[image_key(cam)]
        assert ft["dtype"] == "video" and ft["shape"] == [48, 80, 3]
        assert ft["info"]["video.codec"] == "h264" and ft["info"]["video.pix_fmt"] == "yuv444p"
    expected = {"observation.state.cartesian_position": 6, "observation.state.gripper_position": 1,
                "observation.state.joint_position": 7, "observation.state": 8, "action.cartesian_position": 6,
                "action.gripper_position": 1, "action.joint_position": 7, "action": 8, "is_first": 1, "is_last": 1,
                "is_terminal": 1, "language_instruction": 1, "reward": 1, "discount": 1, "timestamp": 1,
                "frame_index": 1, "episode_index": 1, "index": 1, "task_index": 1}
    for name, dim in expected.items():
        assert feats[name]["shape"] == [dim], name
    table = pq.read_table(dataset / "data/chunk-000/episode_000001.parquet")
    assert set(table.column_names) == {k for k, v in feats.items() if v["dtype"] != "video"}
    assert table.schema.field("observation.state.cartesian_position").type == pa.list_(pa.float32(), 6)
    assert table.schema.field("observation.state.gripper_position").type == pa.float32()
    assert table.schema.field("is_first").type == pa.bool_()
    cols = LeRobotEpisodes(dataset).load_columns(1)
    ep = episodes[1]
    np.testing.assert_array_equal(cols["observation.state"], np.concatenate([ep.joint_position, ep.gripper_position], 1))
    np.testing.assert_array_equal(cols["action"], np.concatenate([ep.action_joint_position, ep.action_gripper_position], 1))
    assert cols["is_first"][:, 0].tolist() == [True] + [False] * (ep.length - 1)
    assert cols["is_last"][-1, 0] and cols["reward"].sum() == 0.0  # episode 1 failed: no reward, not terminal
    assert not cols["is_terminal"].any() and cols["task_index"][0, 0] == 1
    np.testing.assert_array_equal(cols["index"][:, 0], np.arange(LENGTHS[0], LENGTHS[0] + LENGTHS[1]))
    np.testing.assert_allclose(cols["timestamp"][:, 0], np.arange(ep.length) / 15, rtol=1e-6)
    assert list(cols["language_instruction"]) == [INSTRUCTIONS[1]] * ep.length
    lines = (dataset / "meta/episodes.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"episode_index": 0, "tasks": [INSTRUCTIONS[0]], "length": LENGTHS[0],
                                    "success": True, "seed": 0, "task_family": "pick", "extra": {"noise": 0.0}}


# ------------------------------------------------------------------ determinism
def test_encoding_the_same_frames_again_decodes_to_the_same_frames(tmp_path):
    """x264's macroblock tree once made the output depend on the process's memory state: the same
    simulator frames encoded twice in one process decoded differently (first encode against later ones)."""
    from persistworld_env.sim.recording import record_episode
    from persistworld_env.sim.simulator import MiniDROIDSimulator

    frames = record_episode(MiniDROIDSimulator(48, 80), 5, max_ticks=60).frames["wrist_left"]
    decoded = []
    for i in range(4):
        encode_video(frames, tmp_path / f"{i}.mp4")
        decoded.append(decode_video(tmp_path / f"{i}.mp4"))
    for other in decoded[1:]:
        np.testing.assert_array_equal(other, decoded[0])


def assert_same_dataset(root: Path, ref: Path) -> None:
    """Parquet and meta files byte-identical; videos decode to the same frames (mp4 bytes are not compared)."""
    files = sorted(str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    for rel in files:
        if rel.endswith(".mp4"):
            np.testing.assert_array_equal(decode_video(root / rel), decode_video(ref / rel), err_msg=rel)
        else:
            assert (root / rel).read_bytes() == (ref / rel).read_bytes(), rel


def test_writer_is_deterministic_and_order_independent(tmp_path, dataset, episodes):
    write_dataset(tmp_path / "a", episodes)
    write_dataset(tmp_path / "b", episodes, order=[2, 0, 3, 1])
    assert_same_dataset(tmp_path / "a", dataset)
    assert_same_dataset(tmp_path / "b", dataset)  # out-of-order writes converge after finalize()


# ------------------------------------------------------------------ errors
def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_reader_errors_name_the_file(tmp_path, dataset):
    root = _copy(dataset, tmp_path / "d")
    parquet = root / "data/chunk-000/episode_000002.parquet"
    parquet.unlink()
    reader = LeRobotEpisodes(root)
    with pytest.raises(DatasetError, match="episode_000002.parquet"):
        reader.load_pose(2)
    vid = reader.video_path(1, "wrist_left")
    vid.write_bytes(vid.read_bytes()[: vid.stat().st_size // 2])
    with pytest.raises(DatasetError, match=str(vid)):
        reader.load_frames(1, "wrist_left")
    vid.unlink()
    with pytest.raises(DatasetError, match="missing video"):
        reader.load_frames(1, "wrist_left")
    bad = root / "data/chunk-000/episode_000003.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(DatasetError, match="episode_000003.parquet.*truncated or corrupt"):
        reader.load_pose(3)
    # A readable file without a column says so, rather than calling the file corrupt.
    with pytest.raises(DatasetError, match=r"episode_000000.parquet has no column\(s\) \['nope'\]"):
        reader.load_columns(0, ["observation.state.cartesian_position", "nope"])

    with pytest.raises(DatasetError, match="info.json"):
        LeRobotEpisodes(tmp_path / "empty")


def test_corrupt_episodes_jsonl(tmp_path, dataset):
    root = _copy(dataset, tmp_path / "d")
    path = root / "meta/episodes.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"episode_index": 1, "tasks": [', *lines[2:]]) + "\n")
    with pytest.raises(DatasetError, match=r"episodes.jsonl:2"):
        LeRobotEpisodes(root)
    # a torn last line (interrupted append, no newline) is not an index entry: skipped with a warning
    path.write_text("\n".join(lines[:3]) + '\n{"episode_index": 3, "ta')
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert LeRobotEpisodes(root).episode_indices == [0, 1, 2]


# ------------------------------------------------------------------ resumability
def test_resume_after_crash(tmp_path, dataset, episodes):
    root = tmp_path / "r"
    writer = write_dataset(root, episodes[:2], finalize=False)
    del writer
    # simulate a crash while episode 2 was being written: garbage files, a stray temporary,
    # an orphan per-episode stats line and a torn episodes.jsonl append
    info = {"chunks_size": 1000, "data_path": layout.DATA_PATH, "video_path": layout.VIDEO_PATH}
    layout.data_file(root, info, 2).write_bytes(b"garbage")
    layout.video_file(root, info, 2, "wrist_left").parent.mkdir(parents=True, exist_ok=True)
    layout.video_file(root, info, 2, "wrist_left").write_bytes(b"\x00" * 100)
    stray = root / "videos/chunk-000/observation.images.exterior_1_left/episode_000002.tmp-1-abc.mp4"
    stray.write_bytes(b"partial")
    with open(root / "meta/episodes_stats.jsonl", "a") as f:
        f.write(json.dumps({"episode_index": 2, "stats": {}}) + "\n")
    with open(root / "meta/episodes.jsonl", "a") as f:
        f.write('{"episode_index": 2, "tas')

    writer = LeRobotWriter(root)
    assert writer.completed_episodes() == {0, 1}
    assert not stray.exists()
    assert len((root / "meta/episodes_stats.jsonl").read_text().splitlines()) == 2
    assert (root / "meta/episodes.jsonl").read_text().endswith("\n")
    with pytest.raises(ValueError, match="already"):
        writer.write_episode(1, episodes[1])
    for i in (2, 3):
        writer.write_episode(i, episodes[i])
    writer.finalize()
    assert LeRobotWriter(root).completed_episodes() == {0, 1, 2, 3}
    assert_same_dataset(root, dataset)  # resumed dataset == one written in a single pass


def test_writer_rejects_inconsistent_episodes(tmp_path):
    writer = LeRobotWriter(tmp_path)
    writer.write_episode(0, make_episode(0, 20))
    with pytest.raises(ValueError, match="48x80"):
        writer.write_episode(1, make_episode(1, 20, height=32, width=64))
    with pytest.raises(ValueError, match="fps"):
        LeRobotWriter(tmp_path, fps=10)
