import numpy as np
import pytest

from parallel import mesh as mesh_lib


@pytest.mark.parametrize("spec,n,expected", [
    ("data:8", 8, {"data": 8}),
    ("data:4,expert:2", 8, {"data": 4, "expert": 2}),
    ("data:-1,tensor:2", 8, {"data": 4, "tensor": 2}),
    (" workers : 2 , data:-1 ", 8, {"workers": 2, "data": 4}),
    ("data:-1", 1, {"data": 1}),
    ("data:2,expert:2,tensor:2", 8, {"data": 2, "expert": 2, "tensor": 2}),
])
def test_parse_mesh_spec(spec, n, expected):
    sizes = mesh_lib.parse_mesh_spec(spec, n)
    assert sizes == expected
    assert list(sizes) == list(expected)  # axis order is kept


@pytest.mark.parametrize("spec,match", [
    ("data:3", "multiply to 3"),
    ("batch:8", "unknown axis 'batch'"),
    ("data", "not AXIS:SIZE"),
    ("data:x", "not an integer"),
    ("data:0", "must be >= 1 or -1"),
    ("data:-1,tensor:-1", "more than one axis"),
    ("data:4,data:2", "given twice"),
    ("data:3,tensor:-1", "does not divide"),
    ("", "empty"),
])
def test_parse_mesh_spec_errors_name_string_and_devices(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        mesh_lib.parse_mesh_spec(spec, 8)
    assert repr(spec) in str(info.value) and "8 devices" in str(info.value)


def test_make_mesh_uses_every_device(devices):
    mesh = mesh_lib.make_mesh("data:2,tensor:-1")
    assert mesh.axis_names == ("data", "tensor")
    assert dict(mesh.shape) == {"data": 2, "tensor": 4}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_shard_batch_splits_along_data(devices):
    mesh = mesh_lib.make_mesh("data:4,tensor:2")
    x = np.arange(16 * 3).reshape(16, 3)
    placed = mesh_lib.shard_batch({"x": x}, mesh)["x"]
    np.testing.assert_array_equal(np.asarray(placed), x)
    shard_rows = {tuple(np.asarray(s.data)[:, 0]) for s in placed.addressable_shards}
    assert len(shard_rows) == 4 and all(len(r) == 4 for r in shard_rows)  # 4 distinct row blocks


def test_check_global_batch(devices):
    mesh = mesh_lib.make_mesh("data:8")
    mesh_lib.check_global_batch(16, mesh)
    with pytest.raises(ValueError, match="batch_size=12 must be a positive multiple"):
        mesh_lib.check_global_batch(12, mesh)


@pytest.mark.parametrize("spec, devices, needed", [
    ("data:2,expert:2,tensor:2", 1, 8),   # the MoE example of scripts/train_lm.py on a plain CPU machine
    ("data:16", 8, 16),
    ("expert:4,data:-1", 2, 4),           # the fixed sizes alone exceed the devices
])
def test_a_mesh_larger_than_the_devices_says_how_to_simulate_them(spec, devices, needed):
    with pytest.raises(ValueError) as info:
        mesh_lib.parse_mesh_spec(spec, devices)
    message = str(info.value)
    assert f"XLA_FLAGS=--xla_force_host_platform_device_count={needed}" in message, message
    assert "\n" not in message and f"for {devices} device{'s' if devices > 1 else ''}:" in message


@pytest.mark.parametrize("spec", ["data:3", "data:3,tensor:-1"])
def test_a_mesh_that_fits_badly_gets_no_simulation_hint(spec):
    with pytest.raises(ValueError) as info:
        mesh_lib.parse_mesh_spec(spec, 8)
    assert "xla_force_host_platform_device_count" not in str(info.value)


def test_diloco_workers_over_the_devices_say_how_to_simulate_them():
    from parallel import diloco

    with pytest.raises(ValueError, match="workers=4 must divide the number of devices 2; to simulate 4 devices on "
                                         "CPU, run with XLA_FLAGS=--xla_force_host_platform_device_count=4"):
        diloco.check_workers(4, 2)
