"""A family that learns a site model from references and can save and load it (as the learned
harmonization and anomaly families do), counting how often it trains."""

import json

import numpy as np

from napari_medgen import InputSpec, ModelFamily, Output, Param, Result, Task, hookimpl

TRAINED = []


class SiteModel(ModelFamily):
    id = "fake.sitemodel"
    task = Task.HARMONIZE
    display_name = "Site model"
    version = "0.1"
    trains = True
    params = (
        Param("model_file", "str", "", path="read", suffixes=(".safetensors",)),
        Param("save_model", "str", "", path="write", suffixes=(".safetensors",)),
    )
    inputs = (InputSpec("references", required=False),)

    def run(self, inputs, params, ctx):
        if params["model_file"]:
            with open(params["model_file"]) as fh:
                level = json.load(fh)["level"]
        else:
            TRAINED.append(len(inputs.references))
            level = float(np.mean([np.mean(r.data) for r in inputs.references]))
            if params["save_model"]:
                with open(params["save_model"], "w") as fh:
                    json.dump({"level": level}, fh)
        data = np.asarray(inputs.image.data, np.float32) * 0 + level
        ctx.progress(1, 1, "site model")
        return Result([Output("image", inputs.image.with_data(data))], info={"level": level})


@hookimpl
def medgen_register_families(register):
    register(SiteModel())
