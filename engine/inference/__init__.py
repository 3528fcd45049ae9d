"""Pure compute: arrays and a loaded model in, results out. No store, no files, no cases."""

from engine.public import public_face

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "cam": ("BASELINE", "METHODS"),
    "classify": ("Classifier", "OOD_WARNING", "Prediction", "ood_in_words", "operating_point_in_words",
                 "uncertainty_in_words"),
    "explainer": ("Explainer", "Heatmap"),
    "faithfulness": ("METRICS", "REMOVED"),
    "predict": ("PRECISIONS",),
    "segment": ("Segmenter",),
    "sequence": ("SequenceClassifier", "SequencePrediction"),
})
