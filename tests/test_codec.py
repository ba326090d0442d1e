from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline import EncodedCube, EncodeOptions, GroupSpec, decode_cube, encode_cube
from pipeline.codec.metrics import bpppb, compare
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.errors import CorruptStreamError, InvalidCubeError, ManifestError


def assert_same_structure(a: xr.Dataset, b: xr.Dataset) -> None:
    assert list(a.data_vars) == list(b.data_vars)
    assert dict(a.sizes) == dict(b.sizes)
    assert a.attrs == b.attrs
    for name in a.variables:
        assert a[name].dims == b[name].dims, name
        assert a[name].dtype == b[name].dtype, name
        assert a[name].attrs.keys() == b[name].attrs.keys(), name
    for name in a.coords:
        xr.testing.assert_identical(a[name], b[name])


def test_eolearn_roundtrip_masks_exact_and_metadata_kept(eolearn):
    enc = encode_cube(eolearn, EncodeOptions(crf=12))
    dec = decode_cube(enc)
    assert_same_structure(eolearn, dec)
    np.testing.assert_array_equal(dec.CLM.values, eolearn.CLM.values)
    np.testing.assert_array_equal(np.isnan(dec.NDVI.values), np.isnan(eolearn.NDVI.values))
    np.testing.assert_array_equal(dec.DEM.values, eolearn.DEM.values)
    assert dec.rio.crs == eolearn.rio.crs
    q = {b.channel: b for b in compare(eolearn, dec)}
    assert q["CLM"].exact and q["NDVI"].psnr > 40
    assert 0 < bpppb(enc) < 4


def test_landsat_nodata_and_qa_exact(landsat):
    enc = encode_cube(landsat, EncodeOptions(crf=16))
    dec = decode_cube(enc)
    assert_same_structure(landsat, dec)
    np.testing.assert_array_equal(dec.BQA.values, landsat.BQA.values)
    np.testing.assert_array_equal(dec.reflectance.values == 0, landsat.reflectance.values == 0)
    assert list(dec.band.values) == list(landsat.band.values)


@pytest.mark.parametrize("name", ["eolearn", "landsat"])
def test_target_psnr_45_met_on_every_band(name, request):
    ds = request.getfixturevalue(name)
    enc = encode_cube(ds, EncodeOptions(psnr=45))
    q = compare(ds, decode_cube(enc))
    assert all(b.psnr >= 45 for b in q), [(b.channel, b.psnr) for b in q]
    lossy = [s for s in enc.manifest.streams if s.kind == "continuous" and not s.lossless]
    assert lossy and all(s.crf is not None and s.crf > 0 for s in lossy)


def test_lossless_integer_bands_are_exact(landsat):
    ds = landsat.isel(time=slice(0, 4))
    dec = decode_cube(encode_cube(ds, EncodeOptions(lossless=True)))
    np.testing.assert_array_equal(dec.reflectance.values, ds.reflectance.values)


def test_groups_and_subset_decode_reads_only_needed_streams(s2cube):
    opts = EncodeOptions(crf=10, groups=(GroupSpec(("B04", "B03", "B02"), name="rgb"),))
    enc = EncodedCube.from_bytes(encode_cube(s2cube, opts).to_bytes())
    assert [s.name for s in enc.manifest.streams][:1] == ["rgb"]
    enc.store.reads.clear()
    dec = decode_cube(enc, variables=["B04", "B02"])
    assert list(dec.data_vars) == ["B02", "B04"]  # original order
    assert sorted(enc.store.reads) == ["masks.bits.zst", "rgb.mkv"]


def test_float_encoding_and_fill_roundtrip_through_netcdf(s2cube, tmp_path):
    dec = decode_cube(encode_cube(s2cube, EncodeOptions(crf=4)))
    assert dec.B02.encoding["dtype"] == np.dtype("int16")
    assert dec.B02.encoding["scale_factor"] == 0.0001
    path = tmp_path / "out.nc"
    dec.to_netcdf(path)
    raw = xr.open_dataset(path, mask_and_scale=False)
    assert raw.B02.dtype == np.int16 and (raw.B02.values == -9999).any()
    back = xr.open_dataset(path)
    np.testing.assert_array_equal(np.isnan(back.B02.values), np.isnan(s2cube.B02.values))


def test_folder_and_bytes_roundtrip(s2cube, tmp_path):
    enc = encode_cube(s2cube)
    enc.to_folder(tmp_path / "cube")
    a = decode_cube(EncodedCube.from_folder(tmp_path / "cube"))
    b = decode_cube(EncodedCube.from_bytes(enc.to_bytes()))
    xr.testing.assert_identical(a, b)


def test_odd_sizes_are_padded_and_cropped():
    from tests.conftest import s2_like

    ds = s2_like(t=5, h=17, w=23)
    enc = encode_cube(ds)
    assert enc.manifest.pad == (1, 1)
    assert decode_cube(enc).sizes == ds.sizes


def test_time_window_seeks_to_keyframe(s2cube):
    from tests.conftest import s2_like

    ds = s2_like(t=40)
    enc = encode_cube(ds, EncodeOptions(crf=20, keyint=8, decorrelate="none"))
    stats = DecodeStats()
    dec = decode_cube(enc, variables=["B02"], time=slice(33, 36), stats=stats)
    full = decode_cube(enc, variables=["B02"])
    np.testing.assert_array_equal(dec.B02.values, full.B02.values[33:36])
    assert dec.time.values.tolist() == ds.time.values[33:36].tolist()
    assert stats.frames_decoded <= 8 + 3  # one GOP at most, not 36 frames


# --- bad input -------------------------------------------------------------------------
def test_missing_dims_error():
    ds = xr.Dataset({"a": (("t2", "y", "x"), np.zeros((2, 4, 4)))})
    with pytest.raises(InvalidCubeError, match="no time dimension"):
        encode_cube(ds)


def test_zero_frames_error(s2cube):
    with pytest.raises(InvalidCubeError, match="zero frames"):
        encode_cube(s2cube.isel(time=slice(0, 0)))


def test_unsupported_dtype_error():
    ds = xr.Dataset({"c": (("time", "y", "x"), np.zeros((2, 4, 4), dtype=np.complex64))})
    with pytest.raises(InvalidCubeError, match="unsupported dtype complex64"):
        encode_cube(ds)


def test_all_nan_band_is_its_mask(s2cube):
    """Was an error that stopped a whole pack; now the mask restores the band exactly."""
    s2cube["B02"][:] = np.nan
    dec = decode_cube(EncodedCube.from_bytes(encode_cube(s2cube).to_bytes()))
    assert dec["B02"].dtype == s2cube["B02"].dtype and np.isnan(dec["B02"].values).all()


def test_values_outside_declared_range_error(s2cube):
    s2cube["B03"].attrs["valid_range"] = [0.0, 0.1]
    with pytest.raises(InvalidCubeError, match="outside its declared valid range"):
        encode_cube(s2cube)


def test_truncated_stream_error(s2cube, tmp_path):
    enc = encode_cube(s2cube)
    enc.to_folder(tmp_path / "c")
    f = tmp_path / "c" / enc.manifest.streams[0].file
    f.write_bytes(f.read_bytes()[:-500])
    with pytest.raises(CorruptStreamError, match="truncated or from another cube"):
        decode_cube(EncodedCube.from_folder(tmp_path / "c"))


def test_corrupt_stream_bytes_error(s2cube, tmp_path):
    enc = encode_cube(s2cube)
    enc.to_folder(tmp_path / "c")
    f = tmp_path / "c" / enc.manifest.streams[0].file
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptStreamError, match="does not match its manifest checksum"):
        decode_cube(EncodedCube.from_folder(tmp_path / "c"))


def test_manifest_from_another_cube_error(s2cube, tmp_path):
    from tests.conftest import s2_like

    encode_cube(s2cube).to_folder(tmp_path / "a")
    encode_cube(s2_like(seed=1)).to_folder(tmp_path / "b")
    (tmp_path / "a" / "manifest.json").write_bytes((tmp_path / "b" / "manifest.json").read_bytes())
    with pytest.raises(CorruptStreamError, match="from another cube"):
        decode_cube(EncodedCube.from_folder(tmp_path / "a"))


def test_malformed_manifest_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "cubecast-cube", "version": 1}')
    with pytest.raises(ManifestError, match="invalid manifest at cube_id"):
        EncodedCube.from_folder(tmp_path)


def test_failed_write_leaves_no_output(s2cube, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        encode_cube(s2cube).to_folder(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
