"""Triton glue for Kyutai STT: requests into earshot.engines.clocked_sequencing, answers out.

The decoder runs on a decoding clock: ``execute`` submits each request with its response sender and
returns at once (the model is decoupled); the clock's thread steps every live sequence together once
per 80 ms frame and answers each request when its audio is decoded.
"""

import functools
import gc
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from earshot.engines import clocked_sequencing, sequencing

ENGINE = "kyutai"

# The same names as the in-process engine's counters (earshot.metrics), served on Triton's port.
_COUNTERS = (
    ("earshot_engine_steps_total", "Model steps run by a clocked engine."),
    (
        "earshot_engine_streams_advanced_total",
        "Streams a clocked engine's steps advanced by one frame, summed over its steps.",
    ),
    (
        "earshot_engine_streams_live_total",
        "Live streams (sending, not yet flushed) at each step of a clocked engine, summed over steps.",
    ),
    (
        "earshot_engine_step_seconds_total",
        "Seconds a clocked engine spent in model steps (over its steps: the mean step time).",
    ),
)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = sequencing.string_parameters(config)
        parameters["instance_kind"] = args["model_instance_kind"]
        parameters["instance_device_id"] = args["model_instance_device_id"]
        decoder = sequencing.load_decoder(ENGINE, parameters)
        labels = {"engine": ENGINE, "model": args["model_name"], "instance": args["model_instance_name"]}
        self.families = [
            pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.COUNTER)
            for name, text in _COUNTERS
        ]
        self.steps, self.advanced, self.live, self.busy = (
            family.Metric(labels=labels) for family in self.families
        )
        self.sequences = clocked_sequencing.ClockedSequences(
            decoder, idle_seconds=sequencing.idle_seconds(config), observe=self._observe
        )
        # As in paraformer_streaming: a full collection no longer walks what loading left alive.
        gc.freeze()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            self.sequences.submit(_chunk(request), functools.partial(_answer, sender))
        return None

    def finalize(self):
        self.sequences.close()

    def _observe(self, advanced, live, seconds):
        self.steps.increment(1)
        self.advanced.increment(advanced)
        self.live.increment(live)
        self.busy.increment(seconds)


def _answer(sender, outcome):
    if outcome.error is not None:
        error = pb_utils.TritonError(outcome.error)
        sender.send(
            pb_utils.InferenceResponse(output_tensors=[], error=error),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )
        return
    # Each send is a round trip to the server: the last recognition carries the final flag.
    *first, last = outcome.said or [None]
    for said in first:
        sender.send(_response(said))
    final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    if last is None:
        sender.send(flags=final)
    else:
        sender.send(_response(last), flags=final)


def _chunk(request):
    def value(name):
        return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

    return sequencing.Chunk(
        corrid=int(value("CORRID").reshape(-1)[0]),
        start=bool(value("START").reshape(-1)[0]),
        end=bool(value("END").reshape(-1)[0]),
        audio=np.ascontiguousarray(value("AUDIO").reshape(-1), dtype=np.float32),
    )


def _response(said):
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("TEXT", np.array([[said.text.encode()]], dtype=np.object_)),
            pb_utils.Tensor("IS_FINAL", np.array([[said.is_final]], dtype=np.bool_)),
            pb_utils.Tensor("SEGMENT", np.array([[said.segment]], dtype=np.int32)),
        ]
    )
