"""Triton glue for the streaming Paraformer: tensors in and out of earshot.engines.sequencing."""

import gc
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from earshot.engines import sequencing

ENGINE = "paraformer"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = sequencing.string_parameters(config)
        parameters["instance_kind"] = args["model_instance_kind"]
        parameters["instance_device_id"] = args["model_instance_device_id"]
        decoder = sequencing.load_decoder(ENGINE, parameters)
        self.table = sequencing.SequenceTable(decoder, idle_seconds=sequencing.idle_seconds(config))
        # What loading left alive lives as long as the model: out of the collector's sight, a full
        # collection no longer walks it (14-22 ms in the stub, holding up a batch: see
        # bench/reports/triton_batching.md).
        gc.freeze()

    def execute(self, requests):
        chunks = [_chunk(request) for request in requests]
        for request, outcome in zip(requests, self.table.step(chunks)):
            sender = request.get_response_sender()
            if outcome.error is not None:
                error = pb_utils.TritonError(outcome.error)
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=[], error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            # Each send is a round trip to the server: the last recognition carries the final flag.
            *first, last = outcome.said or [None]
            for said in first:
                sender.send(_response(said))
            final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            if last is None:
                sender.send(flags=final)
            else:
                sender.send(_response(last), flags=final)
        return None


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
