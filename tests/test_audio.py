import numpy as np
import pytest
import soundfile as sf

from spkver.audio.decode import load_audio
from spkver.audio.sources import find_audio, gather_inputs, read_list
from spkver.errors import SpkverError


def tone(rate, seconds=0.5, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"),
                                         ("wav", "PCM_U8"), ("flac", "PCM_16"), ("ogg", "VORBIS"),
                                         ("mp3", "MPEG_LAYER_III")])
def test_formats_load_as_mono_float32(tmp_path, ext, subtype):
    path = tmp_path / f"a.{ext}"
    sf.write(path, tone(16000), 16000, subtype=subtype)
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 8000) < 64
    assert 0.3 < np.abs(y).max() < 0.7


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_resampling_keeps_duration_and_pitch(tmp_path, rate):
    path = tmp_path / "a.wav"
    sf.write(path, tone(rate, 1.0, 300.0), rate)
    y = load_audio(path, 16000)
    assert len(y) == pytest.approx(16000, abs=2)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) == pytest.approx(300, abs=2)


def test_channels_are_averaged(tmp_path):
    left = tone(16000)
    stereo = np.stack([left, np.zeros_like(left), left, left, left, left], axis=1)
    sf.write(tmp_path / "six.wav", stereo, 16000)
    np.testing.assert_allclose(load_audio(tmp_path / "six.wav", 16000), left * 5 / 6, atol=1e-4)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"), (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable"),
    (bytes(range(256)) * 10, "not a readable"),
])
def test_bad_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(SpkverError, match=message) as info:
        load_audio(path, 16000)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_text_named_flac_missing_file_and_nan(tmp_path):
    (tmp_path / "t.flac").write_text("hello")
    with pytest.raises(SpkverError, match="not a readable"):
        load_audio(tmp_path / "t.flac", 16000)
    with pytest.raises(SpkverError, match="no such file"):
        load_audio(tmp_path / "missing.wav", 16000)
    data = tone(16000)
    data[10] = np.nan
    sf.write(tmp_path / "nan.wav", data, 16000, subtype="FLOAT")
    with pytest.raises(SpkverError, match="NaN"):
        load_audio(tmp_path / "nan.wav", 16000)
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(SpkverError, match="no samples"):
        load_audio(tmp_path / "zero.wav", 16000)


def test_folders_are_searched_recursively_and_sorted(tmp_path):
    for name in ["b/2.wav", "a/1.flac", "a/z/3.WAV", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.path.relative_to(tmp_path).as_posix() for p in find_audio([tmp_path])]
    assert found == ["a/1.flac", "a/z/3.WAV", "b/2.wav"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpkverError, match="no audio files"):
        find_audio([tmp_path / "empty"])
    with pytest.raises(SpkverError, match="no such file"):
        find_audio([tmp_path / "nope"])


def test_lists_and_wav_scp(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "with space é.wav").write_bytes(b"x")
    listing = tmp_path / "sub" / "list.txt"
    listing.write_text("# comment\n\nwith space é.wav\r\nutt1 /abs/path.wav\nrel.wav\n")
    items = read_list(listing)
    assert [i.key for i in items] == ["with space é.wav", "utt1", "rel.wav"]
    assert items[0].path == tmp_path / "sub" / "with space é.wav"
    assert str(items[1].path) == "/abs/path.wav"
    assert items[2].path == tmp_path / "sub" / "rel.wav"
    (tmp_path / "pipe.scp").write_text("u1 sox a.wav -t wav - |\n")
    with pytest.raises(SpkverError, match="line 1"):
        read_list(tmp_path / "pipe.scp")
    (tmp_path / "empty.lst").write_text("# nothing\n")
    with pytest.raises(SpkverError, match="names no audio"):
        read_list(tmp_path / "empty.lst")
    with pytest.raises(SpkverError, match="no audio given"):
        gather_inputs([])
