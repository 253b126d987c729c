"""What serving needs, exported beside a promoted champion's model.keras, so that TF Serving,
TensorFlow.js or an edge runtime need none of this project's code:

  saved_model/   a TensorFlow SavedModel with two signatures, preprocessing included:
                 serving_default(images: string [N])        encoded JPEG/PNG/GIF/BMP bytes
                 serving_pixels(pixels: uint8 [N, H, W, 3])  pixels of any size
                 both -> probabilities float32 [N, C], label string [N] (the most probable class),
                 class_names string [N, C] (the columns of probabilities)
  model.tflite   float16 weights; input float32 [N, S, S, 3] in 0..255 already resized to the
                 model's image size S with its image_fit, output the probabilities

Both resize with the fit the model was trained with (`data.fit_square`); the model standardises
its input itself. Library module: the promote stage calls it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cnn_tasks import data

SIGNATURES = ("serving_default", "serving_pixels")


def export_saved_model(model, classes: list[str], image_size: int, fit: str, path: Path) -> Path:
    """Write the SavedModel with both serving signatures to `path` (replaced if it exists)."""
    import keras
    import tensorflow as tf

    names = tf.constant(list(classes))

    def outputs(pixels):
        proba = model(data.fit_square(pixels, image_size, fit), training=False)
        n = tf.shape(proba)[0]
        return {
            "probabilities": proba,
            "label": tf.gather(names, tf.argmax(proba, axis=1)),
            "class_names": tf.tile(names[None, :], [n, 1]),
        }

    def from_bytes(images):
        pixels = tf.map_fn(
            lambda encoded: data.decode_and_resize(encoded, image_size, fit),
            images,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        return outputs(pixels)  # already S x S: fit_square leaves it as it is

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", from_bytes, [tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint(
        "serving_pixels",
        lambda pixels: outputs(tf.cast(pixels, tf.float32)),
        [tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")],
    )
    shutil.rmtree(path, ignore_errors=True)
    archive.write_out(str(path), verbose=False)
    return path


def export_tflite(model, image_size: int, path: Path, scratch: Path) -> Path:
    """Write a float16 TFLite model (input: float32 pixels [N, S, S, 3] in 0..255) to `path`."""
    import keras
    import tensorflow as tf

    plain = scratch / "plain_saved_model"  # the converter reads a SavedModel of the bare model
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: model(x, training=False),
        [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")],
    )
    shutil.rmtree(plain, ignore_errors=True)
    archive.write_out(str(plain), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(plain), signature_keys=["serve"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())
    shutil.rmtree(plain, ignore_errors=True)
    return path


def upload_folder(store, folder: Path, prefix: str) -> list[str]:
    """Put every file under `folder` at `prefix/<relative path>`; the keys written, sorted."""
    keys = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{file.relative_to(folder).as_posix()}"
        store.put_file(key, file)
        keys.append(key)
    return keys
