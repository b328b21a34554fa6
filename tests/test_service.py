from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.core.audio import decode
from app.core.contract import FeatureConfig
from app.core.emotion import summarise
from app.core.features import FeatureExtractor
from app.core.predictor import Predictor
from app.serving.metrics import ServiceMetrics
from app.serving.service import EmotionService
from app.settings import Settings
from model_export.testing import encode, export_tiny_model, synth_music


@pytest.mark.parametrize(
    ("arousal", "valence", "quadrant"),
    [(0.4, 0.2, "Q1"), (0.4, -0.2, "Q2"), (-0.4, -0.2, "Q3"), (-0.4, 0.2, "Q4"), (0.0, 0.0, "Q1")],
)
def test_summary_quadrants_follow_the_signs_of_the_mean(
    arousal: float, valence: float, quadrant: str
) -> None:
    y = np.array([[arousal - 0.1, valence + 0.1], [arousal + 0.1, valence - 0.1]], np.float32)
    s = summarise(y)
    assert s.quadrant == quadrant
    assert s.mean == pytest.approx({"arousal": arousal, "valence": valence}, abs=1e-6)
    assert s.std == pytest.approx({"arousal": 0.1, "valence": 0.1}, abs=1e-6)
    assert s.quadrant_label


def test_model_card_leaves_out_arrays_and_decodes_json(served_model: Path) -> None:
    predictor = Predictor.load(served_model, providers="cpu", intra_op_threads=1, warmup=False)
    service = EmotionService(
        predictor, FeatureExtractor(predictor.contract.features), Settings(pool_workers=1), ServiceMetrics()
    )
    card = service.model_card()
    assert card["name"] == "tiny"
    assert card["metadata"]["mer.outputs"] == ["arousal", "valence"]
    assert isinstance(card["metadata"]["mer.model_config"], dict)
    assert not any(str(v).startswith("float32le:") for v in card["metadata"].values())
    assert {"mer.norm_mean", "mer.norm_std"} & set(card["metadata"]) == set()
    assert service.max_frames == 1800  # 900 s of 0.5 s frames


def test_a_chunked_model_is_served_with_exactly_its_offline_features(tmp_path: Path) -> None:
    config = FeatureConfig(sample_rate=16_000, chunk_frames=20, chunk_preroll_frames=4)
    model = export_tiny_model(tmp_path, features=config)
    predictor = Predictor.load(model, providers="cpu", intra_op_threads=1)
    assert predictor.contract.features == config  # the chunk layout travels in the contract
    body = encode(synth_music(45.0, 16_000, seed=5), 16_000)
    offline = predictor.predict(FeatureExtractor(config).extract(decode(body, 16_000)).values)

    async def main() -> np.ndarray:
        service = EmotionService(
            predictor, FeatureExtractor(config), Settings(pool_workers=2), ServiceMetrics()
        )
        await service.start()
        try:
            return (await service.predict_audio(body, "audio/wav")).emotion
        finally:
            await service.stop()

    np.testing.assert_array_equal(asyncio.run(main()), offline)
