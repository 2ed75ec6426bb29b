"""A test model that answers a chunk of a sequence only when the sequence's next chunk arrives.

A client that waits for a chunk's answer before it sends the next chunk never gets it; a client
that pipelines its requests gets every answer, in order. Each answer is one response whose TEXT is
the number of samples the sequence has heard so far: a partial, or a final for the END request,
which also answers the chunk waiting before it. A START is answered at once (a client waits for
it: a START may be refused). Responses are sent from ``execute``: Triton hands it a sequence's
requests in order, and a decoupled model may keep a request's response sender after returning.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        self.heard = {}  # sequence id -> samples heard
        self.waiting = {}  # sequence id -> (sender, response) of its chunk not yet answered

    def execute(self, requests):
        for request in requests:
            corrid, start, end = (int(_value(request, n)[0]) for n in ("CORRID", "START", "END"))
            sender = request.get_response_sender()
            if start:
                self.heard[corrid] = 0
            if corrid not in self.heard:
                error = pb_utils.TritonError(f"sequence {corrid} is unknown to late_answer")
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)
                continue
            if corrid in self.waiting:
                waiting_sender, response = self.waiting.pop(corrid)
                waiting_sender.send(response, flags=FINAL)
            self.heard[corrid] += _value(request, "AUDIO").size
            response = _response(str(self.heard[corrid]), is_final=bool(end))
            if start or end:
                sender.send(response, flags=FINAL)
            else:
                self.waiting[corrid] = (sender, response)
            if end:
                del self.heard[corrid]
        return None


def _value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)


def _response(text, *, is_final):
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("TEXT", np.array([[text.encode()]], dtype=np.object_)),
            pb_utils.Tensor("IS_FINAL", np.array([[is_final]], dtype=np.bool_)),
            pb_utils.Tensor("SEGMENT", np.array([[0]], dtype=np.int32)),
        ]
    )
