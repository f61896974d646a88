"""The offline UI -> API converter, on hand-written graphs with the frontend's quirks."""

from __future__ import annotations

import pytest

from workflow_api import WorkflowError, build_ui_workflow, ui_to_api

INFO = {
    "Loader": {"input": {"required": {"ckpt": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["ckpt"]}, "output": ["MODEL", "CLIP"], "output_name": ["MODEL", "CLIP"],
               "display_name": "Loader"},
    "Image": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}, "input_order": {"required": ["image"]},
              "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"], "display_name": "Image"},
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}], "seed": ["INT", {"default": 0, "min": 0, "max": 100, "control_after_generate": True}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 100}], "name": ["COMBO", {"options": ["euler", "ddim"]}],
            },
            "optional": {"scale": ["FLOAT", {"default": 1.0}], "extra": ["LATENT", {}],
                         "forced": ["FLOAT", {"default": 0.5, "forceInput": True}]},
        },
        "input_order": {"required": ["model", "seed", "steps", "name"], "optional": ["scale", "extra", "forced"]},
        "output": ["LATENT"], "output_name": ["LATENT"], "display_name": "Sampler",
    },
    "Identity": {"input": {"required": {"latent": ["LATENT", {}]}}, "input_order": {"required": ["latent"]},
                 "output": ["LATENT"], "output_name": ["LATENT"], "display_name": "Identity"},
}

SPEC = [
    {"id": 1, "type": "Loader", "widgets": {"ckpt": "b.safetensors"}},
    {"id": 2, "type": "Sampler", "widgets": {"seed": 7, "steps": 4, "name": "ddim", "scale": 2.5},
     "links": {"model": (1, 0)}},
    {"id": 3, "type": "Identity", "links": {"latent": (2, 0)}},
]


def test_round_trip_of_a_built_workflow():
    ui = build_ui_workflow(SPEC, INFO)
    sampler = next(n for n in ui["nodes"] if n["id"] == 2)
    assert sampler["widgets_values"] == [7, "fixed", 4, "ddim", 2.5]  # control value after the seed
    assert ui_to_api(ui, INFO) == {
        "1": {"class_type": "Loader", "inputs": {"ckpt": "b.safetensors"}, "_meta": {"title": "Loader"}},
        "2": {"class_type": "Sampler", "inputs": {"seed": 7, "steps": 4, "name": "ddim", "scale": 2.5, "model": ["1", 0]},
              "_meta": {"title": "Sampler"}},
        "3": {"class_type": "Identity", "inputs": {"latent": ["2", 0]}, "_meta": {"title": "Identity"}},
    }


def test_upload_widget_value_is_skipped():
    ui = build_ui_workflow([{"id": 1, "type": "Image", "widgets": {"image": "x.png"}}], INFO)
    assert ui["nodes"][0]["widgets_values"] == ["x.png", "image"]
    assert ui_to_api(ui, INFO)["1"]["inputs"] == {"image": "x.png"}


def test_widget_converted_to_an_input_takes_the_link():
    spec = [*SPEC[:2], {"id": 4, "type": "Sampler", "links": {"model": (1, 0), "steps": (5, 0)}}]
    spec.append({"id": 5, "type": "Loader"})
    INFO2 = dict(INFO, Loader={**INFO["Loader"], "output": ["MODEL", "INT"], "output_name": ["MODEL", "INT"]})
    ui = build_ui_workflow(spec, INFO2)
    assert ui_to_api(ui, INFO2)["4"]["inputs"]["steps"] == ["5", 0]


def test_bypassed_node_passes_its_input_through_and_muted_node_is_dropped():
    spec = [*SPEC, {"id": 4, "type": "Identity", "links": {"latent": (3, 0)}}]
    ui = build_ui_workflow(spec, INFO)
    ui["nodes"][2]["mode"] = 4  # node 3 bypassed
    prompt = ui_to_api(ui, INFO)
    assert "3" not in prompt and prompt["4"]["inputs"]["latent"] == ["2", 0]
    ui["nodes"][2]["mode"] = 2  # node 3 muted
    prompt = ui_to_api(ui, INFO)
    assert "3" not in prompt and "latent" not in prompt["4"]["inputs"]


def test_reroute_and_primitive_are_resolved():
    ui = build_ui_workflow(SPEC, INFO)
    # Insert a Reroute between sampler and identity, and a PrimitiveNode feeding the seed.
    link = next(lnk for lnk in ui["links"] if lnk[3] == 3)
    ui["nodes"].append({"id": 10, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": link[0]}],
                        "outputs": [{"name": "", "type": "LATENT", "links": [99]}]})
    link[3], link[4] = 10, 0
    ui["links"].append([99, 10, 0, 3, 0, "LATENT"])
    ui["nodes"][2]["inputs"][0]["link"] = 99
    ui["nodes"].append({"id": 11, "type": "PrimitiveNode", "widgets_values": [42, "fixed"],
                        "outputs": [{"name": "INT", "type": "INT", "links": [100]}]})
    ui["links"].append([100, 11, 0, 2, 1, "INT"])
    ui["nodes"][1]["inputs"].append({"name": "seed", "type": "INT", "link": 100, "widget": {"name": "seed"}})
    prompt = ui_to_api(ui, INFO)
    assert prompt["3"]["inputs"]["latent"] == ["2", 0]
    assert prompt["2"]["inputs"]["seed"] == 42
    assert "10" not in prompt and "11" not in prompt


def test_unknown_node_type_is_an_error():
    ui = build_ui_workflow(SPEC, INFO)
    ui["nodes"][0]["type"] = "NotInstalled"
    with pytest.raises(WorkflowError, match="NotInstalled"):
        ui_to_api(ui, INFO)


def test_dict_widget_values_are_read_by_name():
    ui = build_ui_workflow(SPEC, INFO)
    ui["nodes"][1]["widgets_values"] = {"seed": 3, "steps": 9, "name": "euler"}
    inputs = ui_to_api(ui, INFO)["2"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["name"]) == (3, 9, "euler")
