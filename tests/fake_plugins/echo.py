"""A well-behaved plugin: an identity 'harmonize' family and one whose run() raises."""

import numpy as np

from napari_medgen import InputSpec, ModelFamily, Output, Param, Result, Task, hookimpl


class Echo(ModelFamily):
    id = "fake.echo"
    task = Task.HARMONIZE
    display_name = "Echo"
    version = "1.2.3"
    description = "returns the input scaled by a factor"
    params = (Param("factor", "float", 1.0, minimum=0.0, maximum=10.0),)
    inputs = (InputSpec("references", required=True),)

    def run(self, inputs, params, ctx):
        ctx.progress(1, 1, "echo")
        data = np.asarray(inputs.image.data, dtype=np.float32) * params["factor"]
        return Result([Output("image", inputs.image.with_data(data, name=inputs.image.name + " (echo)"))])


class Explodes(ModelFamily):
    id = "fake.explodes"
    task = Task.HARMONIZE
    display_name = "Explodes"
    version = "0.0.1"
    inputs = (InputSpec("references", required=True),)

    def run(self, inputs, params, ctx):
        raise ZeroDivisionError("division by zero inside the plugin")


class Slow(ModelFamily):
    """Works for ~10 s in small steps, so a test can cancel it mid-run."""

    id = "fake.slow"
    task = Task.ANOMALY
    display_name = "Slow"
    version = "0.1"

    def run(self, inputs, params, ctx):
        import time

        for i in range(200):
            ctx.progress(i, 200, f"step {i}")
            time.sleep(0.05)
        return Result([Output("heatmap", inputs.image.with_data(np.zeros(inputs.image.shape, np.float32)), "heatmap")])


@hookimpl
def medgen_register_families(register):
    register(Echo())
    register(Explodes())
    register(Slow())
