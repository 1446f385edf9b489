"""POST/GET /v1/analyses/{id}/questions against the real API, Postgres and S3."""

from __future__ import annotations

import uuid

import httpx
import pytest

from devstack import child_env, start_api
from shared import clinical
from tests.e2e.seeding import result_for, seed_analysis
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _ask(api, analysis_id, question: str) -> httpx.Response:
    return api.post(f"/v1/analyses/{analysis_id}/questions", json={"question": question})


def test_answer_is_grounded_cited_stored_and_listed(api, context, tenant_key):
    tenant_id, _ = tenant_key
    result = result_for(0.87, skin_group="brown", ita=3.0)
    analysis_id = seed_analysis(context, tenant_id, result=result, weights="trained")

    asked = _ask(api, analysis_id, "  Is the border irregular?  ")
    assert asked.status_code == 201, asked.text
    body = asked.json()
    assert body["question"] == "Is the border irregular?"
    assert body["answer"]["cited"] == ["result.concepts.border"]
    assert "0.61" in body["answer"]["text"]
    assert body["answer"]["grounded"] is True and body["answer"]["outside_scope"] is False
    assert body["model_answer"] is None
    assert "not a certified medical device" in body["disclaimer"]

    second = _ask(api, analysis_id, "What about skin tone bias?").json()
    assert "Bias warning" in second["answer"]["text"]
    assert "result.equity.bias_warning" in second["answer"]["cited"]
    again = _ask(api, analysis_id, "What about skin tone bias?").json()
    assert again["answer"] == second["answer"]

    listed = api.get(f"/v1/analyses/{analysis_id}/questions")
    assert listed.status_code == 200
    assert [q["id"] for q in listed.json()["data"]] == [body["id"], second["id"], again["id"]]
    assert listed.json()["data"][0]["answer"] == body["answer"]


def test_untrained_model_answer_says_so(api, context, tenant_key):
    analysis_id = seed_analysis(context, tenant_key[0], result=result_for(0.91), weights="untrained")
    answer = _ask(api, analysis_id, "Is it melanoma, and how high is the risk?").json()["answer"]
    assert "UNTRAINED" in answer["text"]
    assert "model.weights" in answer["cited"]


def test_outside_scope_and_treatment_questions(api, context, tenant_key):
    analysis_id = seed_analysis(context, tenant_key[0], result=result_for(0.3), weights="trained")
    weather = _ask(api, analysis_id, "Will it rain tomorrow?").json()["answer"]
    assert weather["outside_scope"] is True and weather["cited"] == []
    assert "outside what this analysis measured" in weather["text"]
    itch = _ask(api, analysis_id, "Does it itch?").json()["answer"]
    assert itch["outside_scope"] is True
    treat = _ask(api, analysis_id, "Which cream should I prescribe?").json()["answer"]
    assert "no treatment advice of its own" in treat["text"]
    # The PLAN comes from the clinical rules (the same rule the scribe note's PLAN is written by),
    # never from parsing the note's text: a line planted in the note is not quoted.
    assert "Seeded plan line for the test." not in treat["text"]
    assert clinical.DISPOSITION_PLAN["clinician_review"] in treat["text"]
    assert treat["cited"] == list(clinical.PLAN_FIELDS)


def test_rejected_analysis_has_no_findings(api, context, tenant_key):
    analysis_id = seed_analysis(
        context, tenant_key[0], status="rejected", rejection={"code": "blurry", "detail": "blur score 12.0 below 100.0"}
    )
    answer = _ask(api, analysis_id, "Is it melanoma?").json()["answer"]
    assert "no findings" in answer["text"] and "blur score 12.0" in answer["text"]
    assert answer["intents"] == ["status"]


def test_other_tenants_analysis_is_404_problem(api, api_url, context, tenant_key):
    from shared.db import session_scope
    from shared.tenants import issue_key

    analysis_id = seed_analysis(context, tenant_key[0], result=result_for(0.6))
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, f"test-{uuid.uuid4().hex[:10]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30) as other:
        for response in (
            other.post(f"/v1/analyses/{analysis_id}/questions", json={"question": "risk?"}),
            other.get(f"/v1/analyses/{analysis_id}/questions"),
        ):
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/problem+json")
    assert api.get(f"/v1/analyses/{analysis_id}/questions").json()["data"] == []
    assert api.post(f"/v1/analyses/{uuid.uuid4()}/questions", json={"question": "risk?"}).status_code == 404


@pytest.mark.parametrize(
    "body", [{"question": ""}, {"question": "   "}, {"question": "x" * 501}, {}, {"question": "a", "extra": 1}]
)
def test_bad_question_is_422_problem(api, context, tenant_key, body):
    analysis_id = seed_analysis(context, tenant_key[0], result=result_for(0.6))
    response = api.post(f"/v1/analyses/{analysis_id}/questions", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_openapi_declares_models_and_problems(api):
    spec = api.get("/openapi.json").json()
    post = spec["paths"]["/v1/analyses/{analysis_id}/questions"]["post"]
    assert "QuestionOut" in str(post["responses"]["201"])
    assert "application/problem+json" in post["responses"]["404"]["content"]


def test_real_pipeline_result_is_quoted_exactly(api, worker, wait_final):
    photo = encode_jpeg(make_lesion(seed=21, size=(240, 320), radius_frac=0.22, irregularity=0.5).image)
    submitted = api.post("/v1/analyses", files={"image": ("l.jpg", photo, "image/jpeg")})
    assert submitted.status_code == 202, submitted.text
    analysis = wait_final(submitted.json()["id"])
    assert analysis["status"] == "succeeded", analysis
    result = analysis["result"]
    answer = _ask(api, analysis["id"], "What is the probability, and the ITA?").json()["answer"]
    assert f"{result['probability'] * 100:.1f}%" in answer["text"]
    assert f"{result['equity']['ita_degrees']:.1f}°" in answer["text"]
    assert analysis["model"]["weights"] == "untrained" and "UNTRAINED" in answer["text"]


# ---------------------------------------------------------------- the optional vision-language model


def _tiny_blip(directory):
    """A randomly initialised, tiny BLIP VQA model and processor saved as an operator would."""
    transformers = pytest.importorskip("transformers")
    import torch

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = [*special, "is", "it", "a", "lesion", "brown", "yes", "no", "?"]
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(directory / "vocab.txt"), bos_token="[DEC]")
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    config = transformers.BlipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "encoder_hidden_size": 16, "max_position_embeddings": 64,
                     "bos_token_id": 5, "sep_token_id": 3, "pad_token_id": 0},
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.BlipForQuestionAnswering(config).eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture
def vqa_api_url(settings, context, tmp_path):
    model_dir = _tiny_blip(tmp_path / "blip-vqa-tiny")
    env = child_env(settings, vqa_model_dir=model_dir)
    # Never reach a model hub: the model must load from the directory alone.
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    api = start_api(env, tmp_path / "api-vqa.log")
    yield api.url
    api.stop()


def test_local_vision_language_model_answers_beside_grounded_one(vqa_api_url, context, tenant_key, wait):
    analysis_id = seed_analysis(context, tenant_key[0], result=result_for(0.7), weights="untrained")
    with httpx.Client(base_url=vqa_api_url, headers={"Authorization": f"Bearer {tenant_key[1]}"}, timeout=60) as client:
        asked = client.post(f"/v1/analyses/{analysis_id}/questions", json={"question": "Is it brown?"})
        assert asked.status_code == 201, asked.text
        body = asked.json()
        assert body["answer"]["grounded"] is True and body["answer"]["text"]
        assert body["model_answer"]["status"] in {"pending", "done"}
        assert body["model_answer"]["label"] == "generated by a vision-language model; not verified"

        def answered():
            rows = client.get(f"/v1/analyses/{analysis_id}/questions").json()["data"]
            return rows[0]["model_answer"] if rows[0]["model_answer"]["status"] != "pending" else None

        model_answer = wait(answered, timeout=120, message="the model's answer")
    assert model_answer["status"] == "done", model_answer
    assert model_answer["model"] == "blip-vqa-tiny (local)"
    assert isinstance(model_answer["text"], str)
    assert model_answer["label"] == "generated by a vision-language model; not verified"
