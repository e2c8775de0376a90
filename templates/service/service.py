"""An mlnb service: one scikit-learn Pipeline (preprocessing included) from BentoML's model store, served by mlnb.service.

Built by `mlnb package`, which packs mlnb's modules beside this file and gives the model, its features and its task as the
bento's arguments (`bentoml.use_arguments`); run: `mlnb serve` or `bentoml serve <bento>`; container:
`bentoml containerize <bento>` where a Docker engine runs. The environment variables it reads are
`mlnb.service.Settings` (`print(mlnb.service.Settings.table())`). Everything between a request and the model is in
mlnb.service, written and tested as nbs/09a_service.ipynb: this file only declares the BentoML service.
"""
import os

# before numpy and OpenMP load: one thread per model call, since requests already run in parallel
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("MLNB_MODEL_THREADS", "1"))

from typing import Optional, Union

import bentoml
from mlnb.core import die_with_parent
from mlnb.service import BentoArgs, FeedbackAck, Guard, Service, Settings, request_types

die_with_parent()  # this worker goes when its arbiter (`bentoml serve`) goes, even by SIGKILL: it runs in a process group of its own

ARGS = bentoml.use_arguments(BentoArgs)
SETTINGS = Settings.from_env()
TYPES = request_types(ARGS.features, ARGS.task, SETTINGS.max_batch)
Features, Prediction, Explanation = TYPES.features, TYPES.prediction, TYPES.explanation


@bentoml.service(name=ARGS.name, **SETTINGS.bentoml_config())
class Classifier:
    """Serves the champion; in ab mode the challenger answers an MLNB_WEIGHT share of requests (sticky by `key`), in
    shadow mode it scores every request off the request path and is only logged. When the serving model raises, the
    model served before it answers; after MLNB_FALLBACK_AFTER failed calls in a row it is not asked until the champion changes."""
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        self.svc = Service.start(self.model_ref, SETTINGS, TYPES, regression=ARGS.task == "regression")

    def __is_ready__(self) -> bool:
        "Ready (/readyz answers 200) once the first model is warm, and until SIGTERM starts the drain."
        return self.svc.is_ready()

    @bentoml.on_shutdown
    def shutdown(self):
        "Stop following the aliases, finish the shadow scoring and flush the prediction log."
        self.svc.stop()

    @bentoml.api(input_spec=TYPES.predict_in)
    def predict(self, record: Features, key: Optional[str] = None) -> Prediction:
        """Score one record; `key` (a user or session id) keeps A/B assignment sticky."""
        return self.svc.predict(record, key)

    @bentoml.api(input_spec=TYPES.batch_in, batchable=True, max_batch_size=SETTINGS.batch_size,
                 max_latency_ms=SETTINGS.batch_max_latency_ms)
    def predict_batch(self, records: list[Features]) -> list[Prediction]:
        """Score many records (at most MLNB_MAX_BATCH a call); BentoML's adaptive batching merges concurrent calls
        into model calls of at most MLNB_BATCH_SIZE records. In ab mode each merged call goes to one model."""
        return self.svc.predict_batch(records)

    @bentoml.api(input_spec=TYPES.explain_in)
    def explain(self, record: Features) -> Explanation:
        """SHAP values of one record's features (after preprocessing), largest first: of the predicted value, or of the
        positive class (binary) or the predicted class (multiclass), named in `explained`."""
        return self.svc.explain(record)

    @bentoml.api(input_spec=TYPES.feedback_in)
    def feedback(self, request_id: str, label: Union[bool, int, float, str]) -> FeedbackAck:
        """The true label of an earlier prediction, by its request id: one of the classes, or a number for a regression model."""
        return self.svc.feedback(request_id, label)


Classifier.add_asgi_middleware(Guard, inputs={api.route: api.input_spec for api in Classifier.apis.values()})
