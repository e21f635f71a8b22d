//! The Open Inference Protocol on a real server, through its own gRPC messages and plain HTTP:
//! metadata, inference in both content forms and both transports equal to `alps.v1` Predict
//! with the same seed, every output, named versions served read-only, statistics, streaming,
//! auth, and the errors of bad requests.

use alps_proto::{
    inference::{
        self as oip, InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
        grpc_inference_service_client::GrpcInferenceServiceClient,
        infer_parameter::ParameterChoice,
        model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
    },
    v1::{
        AddExamplesRequest, Architecture, CreateProjectRequest, GetProjectRequest, LabelledExample, ModelSpec,
        PredictRequest, Preprocessing, Project, Sample, Tensor, TrainRequest, TrainingParameters,
        WatchTrainingJobRequest, example_service_client::ExampleServiceClient,
        inference_service_client::InferenceServiceClient, predict_result::Outcome,
        project_service_client::ProjectServiceClient, sample::Input, training_service_client::TrainingServiceClient,
    },
};
use alps_system_tests::{
    Process, ServerDirs, builtin_plugin, create_token, http_client, install_plugin, start_server, with_token,
};
use serde_json::{Value, json};
use tonic::{Code, transport::Channel};

struct Server {
    dirs: ServerDirs,
    _process: Process,
    channel: Channel,
    grpc: String,
    http: String,
    metrics: String,
}

impl Server {
    fn oip(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(self.channel.clone())
    }
}

const SEED: u64 = 42;
const K: u32 = 6;

fn tensor(value: f32) -> Option<Input> {
    Some(Input::Tensor(Tensor { shape: vec![1, 2, 2], data: vec![value; 4] }))
}

/// A server with MLP project "p" (classes low/high over 1×2×2 inputs) trained twice: v1 (one
/// epoch) and the active v2 (more epochs).
async fn server(extra: &[&str]) -> (Server, Option<String>) {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut flags = extra.to_vec();
    let tokens = dirs.data.path().join("tokens");
    let token = if extra.contains(&"--tokens") {
        flags.retain(|f| *f != "--tokens");
        let admin = create_token(&tokens, "admin", "ops");
        flags.extend(["--auth-tokens-file", alps_system_tests::path_str(&tokens)]);
        Some(admin)
    } else {
        None
    };
    let (mut process, grpc) = start_server(&dirs, &flags);
    let http = process.listening_addr("http");
    let metrics = process.listening_addr("metrics");
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let project = Project {
        id: "p".into(),
        classes: vec!["low".into(), "high".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
        ..Default::default()
    };
    let mut projects = ProjectServiceClient::new(channel.clone());
    projects.create_project(authed(&token, CreateProjectRequest { project: Some(project) })).await.unwrap();
    let examples: Vec<LabelledExample> = (0..8)
        .flat_map(|i| {
            let jitter = i as f32 * 0.01;
            [("low", 0.1 + jitter), ("high", 0.9 - jitter)].map(|(class, value)| LabelledExample {
                external_id: format!("{class}-{i}"),
                sample: Some(Sample { id: String::new(), input: tensor(value) }),
                class_name: class.into(),
                metadata: Default::default(),
                label_revision: 0,
            })
        })
        .collect();
    let mut examples_client = ExampleServiceClient::new(channel.clone());
    examples_client
        .add_examples(authed(&token, tokio_stream::iter([AddExamplesRequest { project_id: "p".into(), examples }])))
        .await
        .unwrap();
    let mut training = TrainingServiceClient::new(channel.clone());
    for epochs in [1, 30] {
        let parameters = TrainingParameters { epochs, seed: Some(1), learning_rate: 0.05, ..Default::default() };
        let request = TrainRequest { project_id: "p".into(), parameters: Some(parameters), activate: None };
        let job = training.train(authed(&token, request)).await.unwrap().into_inner().job.unwrap();
        let mut watch = training
            .watch_training_job(authed(&token, WatchTrainingJobRequest { job_id: job.job_id }))
            .await
            .unwrap()
            .into_inner();
        while watch.message().await.unwrap().is_some() {}
    }
    let active = projects.get_project(authed(&token, GetProjectRequest { project_id: "p".into() })).await.unwrap();
    assert_eq!(active.into_inner().project.unwrap().active_model_version, "v2");
    (Server { dirs, _process: process, channel, grpc, http, metrics }, token)
}

/// `message` with `token` when the server has tokens.
fn authed<T>(token: &Option<String>, message: T) -> tonic::Request<T> {
    match token {
        Some(token) => with_token(message, token),
        None => tonic::Request::new(message),
    }
}

fn param(choice: ParameterChoice) -> InferParameter {
    InferParameter { parameter_choice: Some(choice) }
}

fn seeded() -> std::collections::HashMap<String, InferParameter> {
    [
        ("seed".to_owned(), param(ParameterChoice::Int64Param(SEED as i64))),
        ("mc_iterations".to_owned(), param(ParameterChoice::Uint64Param(u64::from(K)))),
    ]
    .into()
}

const VALUES: [f32; 3] = [0.12, 0.5, 0.88];

/// A request for the three samples of [`VALUES`] as FP32 `[3, 1, 2, 2]`, in `contents` or
/// `raw_input_contents`.
fn fp32_request(model: &str, version: &str, raw: bool) -> ModelInferRequest {
    let values: Vec<f32> = VALUES.iter().flat_map(|v| [*v; 4]).collect();
    let mut input = InferInputTensor {
        name: "tensor".into(),
        datatype: "FP32".into(),
        shape: vec![3, 1, 2, 2],
        ..Default::default()
    };
    let mut raw_input_contents = Vec::new();
    if raw {
        raw_input_contents.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        input.contents = Some(InferTensorContents { fp32_contents: values, ..Default::default() });
    }
    ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: "r1".into(),
        parameters: seeded(),
        inputs: vec![input],
        outputs: Vec::new(),
        raw_input_contents,
    }
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Output `name` of `response`: its shape and its raw bytes.
fn output<'a>(response: &'a ModelInferResponse, name: &str) -> (&'a [i64], &'a [u8]) {
    let index = response.outputs.iter().position(|o| o.name == name).unwrap_or_else(|| panic!("no output {name}"));
    (&response.outputs[index].shape, &response.raw_output_contents[index])
}

/// What `alps.v1` Predict answers for [`VALUES`] with the same seed: per sample the mean
/// probabilities, class name, score and `[C, K]`.
async fn alps_predict(server: &Server, token: Option<&str>) -> Vec<(Vec<f32>, String, f32, Vec<f32>)> {
    let samples = VALUES.iter().enumerate().map(|(i, v)| Sample { id: i.to_string(), input: tensor(*v) }).collect();
    let request = PredictRequest {
        project_id: "p".into(),
        samples,
        mc_iterations: K,
        seed: Some(SEED),
        return_mc_samples: true,
        ..Default::default()
    };
    let response = InferenceServiceClient::new(server.channel.clone())
        .predict(authed(&token.map(str::to_owned), request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, "v2");
    response
        .results
        .into_iter()
        .map(|r| match r.outcome {
            Some(Outcome::Prediction(p)) => {
                (p.mean_probabilities, p.class_name, p.score, p.mc_samples.map(|t| t.data).unwrap_or_default())
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

fn bytes_elements(raw: &[u8]) -> Vec<String> {
    let (mut out, mut rest) = (Vec::new(), raw);
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        out.push(String::from_utf8(tail[..len].to_vec()).unwrap());
        rest = &tail[len..];
    }
    out
}

#[tokio::test]
async fn model_infer_equals_predict_in_both_content_forms() {
    let (server, _) = server(&[]).await;
    let expected = alps_predict(&server, None).await;
    for raw in [false, true] {
        let response = server.oip().model_infer(fp32_request("p", "", raw)).await.unwrap().into_inner();
        assert_eq!(
            (response.model_name.as_str(), response.model_version.as_str(), response.id.as_str()),
            ("p", "2", "r1")
        );
        let names: Vec<_> = response.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["probabilities", "class", "score", "mc_samples"], "all outputs by default");
        let (shape, probabilities) = output(&response, "probabilities");
        assert_eq!(shape, [3, 2]);
        let (_, classes) = output(&response, "class");
        let (_, scores) = output(&response, "score");
        let (shape, samples) = output(&response, "mc_samples");
        assert_eq!(shape, [3, 2, i64::from(K)]);
        let (probabilities, scores, samples) = (f32s(probabilities), f32s(scores), f32s(samples));
        for (i, (mean, class, score, mc)) in expected.iter().enumerate() {
            assert_eq!(&probabilities[i * 2..i * 2 + 2], mean.as_slice(), "raw={raw} sample {i}");
            assert_eq!(&bytes_elements(classes)[i], class);
            assert_eq!(scores[i], *score);
            assert_eq!(&samples[i * 2 * K as usize..(i + 1) * 2 * K as usize], mc.as_slice());
        }
    }
}

#[tokio::test]
async fn only_requested_outputs_come_back_and_named_versions_are_served_read_only() {
    let (server, _) = server(&[]).await;
    let mut request = fp32_request("p", "1", true);
    request.outputs = vec![InferRequestedOutputTensor { name: "score".into(), ..Default::default() }];
    let v1 = server.oip().model_infer(request.clone()).await.unwrap().into_inner();
    assert_eq!(v1.model_version, "1");
    assert_eq!(v1.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["score"]);
    request.model_version = "v1".into();
    assert_eq!(
        server.oip().model_infer(request.clone()).await.unwrap().into_inner().raw_output_contents,
        v1.raw_output_contents
    );
    request.model_version = "2".into();
    let v2 = server.oip().model_infer(request.clone()).await.unwrap().into_inner();
    assert_ne!(v1.raw_output_contents, v2.raw_output_contents, "v1 and v2 differ");
    // Version 0, the initial weights, stays servable after training.
    request.model_version = "0".into();
    let initial = server.oip().model_infer(request).await.unwrap().into_inner();
    assert_eq!(initial.model_version, "0");
    assert_ne!(initial.raw_output_contents, v1.raw_output_contents);
    // Serving v1 activated nothing.
    let mut projects = ProjectServiceClient::new(server.channel.clone());
    let project = projects.get_project(GetProjectRequest { project_id: "p".into() }).await.unwrap().into_inner();
    assert_eq!(project.project.unwrap().active_model_version, "v2");
    let ready = |version: &str| oip::ModelReadyRequest { name: "p".into(), version: version.into() };
    assert!(server.oip().model_ready(ready("1")).await.unwrap().into_inner().ready);
    assert!(!server.oip().model_ready(ready("7")).await.unwrap().into_inner().ready);
}

#[tokio::test]
async fn metadata_config_index_and_statistics_describe_the_project() {
    let (server, _) = server(&[]).await;
    let mut client = server.oip();
    let metadata = client
        .model_metadata(oip::ModelMetadataRequest { name: "p".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.versions, ["2", "1", "0"]);
    let inputs: Vec<_> =
        metadata.inputs.iter().map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.clone())).collect();
    assert_eq!(inputs, [("image", "BYTES", vec![-1, 1]), ("tensor", "FP32", vec![-1, 1, 2, 2])]);
    let outputs: Vec<_> = metadata.outputs.iter().map(|t| (t.name.as_str(), t.shape.clone())).collect();
    assert_eq!(
        outputs,
        [("probabilities", vec![-1, 2]), ("class", vec![-1]), ("score", vec![-1]), ("mc_samples", vec![-1, 2, -1])]
    );
    let config = client
        .model_config(oip::ModelConfigRequest { name: "p".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert!(config.max_batch_size > 0 && config.input.iter().all(|i| i.optional));
    assert_eq!(config.input[1].dims, [1, 2, 2]);
    let index = client.repository_index(oip::RepositoryIndexRequest::default()).await.unwrap().into_inner();
    assert_eq!(index.models.iter().map(|m| (m.name.as_str(), m.version.as_str())).collect::<Vec<_>>(), [("p", "2")]);
    let server_metadata = client.server_metadata(oip::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert!(server_metadata.extensions.contains(&"statistics".to_owned()));

    for _ in 0..3 {
        client.model_infer(fp32_request("p", "", true)).await.unwrap();
    }
    client.model_infer(fp32_request("p", "9", true)).await.unwrap_err();
    let mut one_bad_sample = fp32_request("p", "", false);
    one_bad_sample.inputs[0].contents.as_mut().unwrap().fp32_contents[0] = f32::INFINITY;
    client.model_infer(one_bad_sample).await.unwrap_err();
    let stats = client
        .model_statistics(oip::ModelStatisticsRequest { name: "p".into(), version: "2".into() })
        .await
        .unwrap()
        .into_inner();
    let [stats] = stats.model_stats.as_slice() else { panic!("{stats:?}") };
    assert_eq!((stats.name.as_str(), stats.version.as_str()), ("p", "2"));
    assert_eq!(stats.inference_count, 11, "3 requests × 3 samples, and the 2 good samples of the failed one");
    assert!(stats.execution_count >= 1 && stats.execution_count <= 4);
    let infer = stats.inference_stats.as_ref().unwrap();
    let counts = [&infer.success, &infer.queue, &infer.compute_input, &infer.compute_infer, &infer.compute_output]
        .map(|d| d.as_ref().unwrap().count);
    assert_eq!(counts, [3; 5], "every stage counted once per successful request");
    assert_eq!(infer.fail.as_ref().unwrap().count, 1, "a request with a failed sample is a failure");
    assert!(infer.success.as_ref().unwrap().ns >= infer.compute_infer.as_ref().unwrap().ns);
}

/// Every bad request: the status code and a fragment of its message.
#[tokio::test]
async fn bad_requests_get_precise_errors_and_the_server_stays_up() {
    let (server, _) = server(&[]).await;
    let mut client = server.oip();
    let base = || fp32_request("p", "", false);
    let two_inputs = {
        let mut r = base();
        r.inputs.push(r.inputs[0].clone());
        r
    };
    let wrong_shape = {
        let mut r = base();
        r.inputs[0].shape = vec![3, 1, 2, 3];
        r
    };
    let wrong_count = {
        let mut r = base();
        r.inputs[0].shape = vec![4, 1, 2, 2];
        r
    };
    let wrong_datatype = {
        let mut r = base();
        r.inputs[0].datatype = "INT8".into();
        r
    };
    let bytes_as_tensor = {
        let mut r = base();
        r.inputs[0].datatype = "BYTES".into();
        r
    };
    let non_finite = {
        let mut r = base();
        r.inputs[0].contents.as_mut().unwrap().fp32_contents[5] = f32::NAN;
        r
    };
    let unknown_output = {
        let mut r = base();
        r.outputs = vec![InferRequestedOutputTensor { name: "logits".into(), ..Default::default() }];
        r
    };
    let unknown_parameter = {
        let mut r = base();
        r.parameters.insert("mc_iteration".into(), param(ParameterChoice::Int64Param(3)));
        r
    };
    let too_many_iterations = {
        let mut r = base();
        r.parameters.insert("mc_iterations".into(), param(ParameterChoice::Int64Param(5000)));
        r
    };
    let unknown_heuristic = {
        let mut r = base();
        r.parameters.insert("heuristic".into(), param(ParameterChoice::StringParam("nope".into())));
        r
    };
    let raw_mismatch = {
        let mut r = fp32_request("p", "", true);
        r.raw_input_contents[0].pop();
        r
    };
    let unknown_input = {
        let mut r = base();
        r.inputs[0].name = "pixels".into();
        r
    };
    let cases = [
        (fp32_request("nope", "", false), Code::NotFound, "not found"),
        (fp32_request("p", "9", false), Code::NotFound, "no model version"),
        (fp32_request("../etc", "", false), Code::InvalidArgument, "model_name"),
        (two_inputs, Code::InvalidArgument, "exactly one"),
        (wrong_shape, Code::InvalidArgument, "takes FP32 [N, 1, 2, 2]"),
        (wrong_count, Code::InvalidArgument, "do not match the shape"),
        (wrong_datatype, Code::InvalidArgument, "not supported"),
        (bytes_as_tensor, Code::InvalidArgument, "`tensor` is FP32"),
        (non_finite, Code::InvalidArgument, "sample 1"),
        (unknown_output, Code::InvalidArgument, "unknown output"),
        (unknown_parameter, Code::InvalidArgument, "unknown parameter"),
        (too_many_iterations, Code::InvalidArgument, "mc_iterations"),
        (unknown_heuristic, Code::NotFound, "nope"),
        (raw_mismatch, Code::InvalidArgument, "whole number of FP32"),
        (unknown_input, Code::InvalidArgument, "unknown input"),
    ];
    for (request, code, fragment) in cases {
        let status = client.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{fragment}: {status:?}");
        assert!(status.message().contains(fragment), "{fragment:?} not in {:?}", status.message());
    }
    // Still serving.
    client.model_infer(base()).await.unwrap();
}

#[tokio::test]
async fn a_failed_stream_request_is_an_error_message_and_the_stream_goes_on() {
    let (server, _) = server(&[]).await;
    let requests = vec![fp32_request("p", "", true), fp32_request("nope", "", true), fp32_request("p", "1", true)];
    let mut responses = server.oip().model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(message) = responses.message().await.unwrap() {
        seen.push((message.error_message, message.infer_response.map(|r| r.model_version)));
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0], (String::new(), Some("2".into())));
    assert!(seen[1].0.contains("not found") && seen[1].1.is_none(), "{:?}", seen[1]);
    assert_eq!(seen[2], (String::new(), Some("1".into())));
}

#[tokio::test]
async fn rest_mirrors_grpc_with_json_and_binary_tensors() {
    let (server, _) = server(&[]).await;
    let grpc = server.oip().model_infer(fp32_request("p", "", true)).await.unwrap().into_inner();
    let http = http_client();
    let base = format!("http://{}", server.http);
    for path in
        ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/p", "/v2/models/p/ready", "/v2/models/p/versions/1"]
    {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let metadata: Value = http.get(format!("{base}/v2/models/p")).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["versions"], json!(["2", "1", "0"]));
    let data: Vec<Vec<Vec<Vec<f32>>>> = VALUES.iter().map(|v| vec![vec![vec![*v; 2]; 2]]).collect();
    let body = json!({
        "id": "j1",
        "parameters": { "seed": SEED, "mc_iterations": K },
        "inputs": [{ "name": "tensor", "datatype": "FP32", "shape": [3, 1, 2, 2], "data": data }],
        "outputs": [{ "name": "probabilities" }, { "name": "class" }],
    });
    let response = http.post(format!("{base}/v2/models/p/infer")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!((answer["id"].as_str(), answer["model_version"].as_str()), (Some("j1"), Some("2")));
    let probabilities: Vec<f32> =
        answer["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(probabilities, f32s(output(&grpc, "probabilities").1));
    assert_eq!(answer["outputs"][1]["data"], json!(bytes_elements(output(&grpc, "class").1)));

    // Binary tensor data: the JSON header, then the input's raw bytes; scores come back binary.
    let header = json!({
        "parameters": { "seed": SEED, "mc_iterations": K },
        "inputs": [{ "name": "tensor", "datatype": "FP32", "shape": [3, 1, 2, 2], "parameters": { "binary_data_size": 48 } }],
        "outputs": [{ "name": "score", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(VALUES.iter().flat_map(|v| [*v; 4]).flat_map(|v| v.to_le_bytes()));
    let response = http
        .post(format!("{base}/v2/models/p/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..length]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 12);
    assert_eq!(&bytes[length..], output(&grpc, "score").1);

    for (path, body, status, fragment) in [
        ("/v2/models/nope/infer", json!({ "inputs": [] }), 404, "not found"),
        ("/v2/models/p/versions/9/infer", json!({ "inputs": [] }), 404, "no model version"),
        ("/v2/models/p/infer", json!({ "inputs": "x" }), 400, "request body"),
        (
            "/v2/models/p/infer",
            json!({ "inputs": [{ "name": "tensor", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": ["a"] }] }),
            400,
            "not a number",
        ),
        ("/v2/models/%2Fetc%2Fpasswd/infer", json!({ "inputs": [] }), 400, "model_name"),
    ] {
        let response = http.post(format!("{base}{path}")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains(fragment), "{fragment:?} not in {error}");
    }
    let response = http.get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    // REST calls are counted like gRPC ones, by route and the code their answer stands for.
    let scrape = http.get(format!("http://{}/metrics", server.metrics)).send().await.unwrap().text().await.unwrap();
    for series in [
        r#"alps_requests_total{service="inference.REST",method="/v2/models/{model}/infer",code="OK"}"#,
        r#"alps_requests_total{service="inference.REST",method="/v2/models/{model}/infer",code="NOT_FOUND"}"#,
        r#"alps_requests_total{service="inference.REST",method="/v2/health/ready",code="OK"}"#,
    ] {
        assert!(scrape.contains(series), "{series} missing from\n{scrape}");
    }

    // Malformed binary framing: every case is a 400 with a JSON error naming the problem.
    let header = json!({ "inputs": [{ "name": "tensor", "datatype": "FP32", "shape": [1, 1, 2, 2],
        "parameters": { "binary_data_size": 16 } }] })
    .to_string();
    let framed = |length: usize, tail: usize| {
        let mut body = header.clone().into_bytes();
        body.extend(std::iter::repeat_n(0u8, tail));
        (length, body)
    };
    for ((length, body), fragment) in [
        (framed(header.len(), 8), "binary_data_size 16 but 8 binary bytes remain"),
        (framed(header.len(), 20), "4 bytes after the inputs' binary data"),
        (framed(header.len() + 100, 16), "Inference-Header-Content-Length"),
    ] {
        let response = http
            .post(format!("{base}/v2/models/p/infer"))
            .header("Inference-Header-Content-Length", length)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{fragment}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains(fragment), "{fragment:?} not in {error}");
    }
}

#[tokio::test]
async fn an_oversized_rest_body_gets_413_with_a_json_error_naming_the_flag() {
    let (server, _) = server(&["--max-message-mib", "1"]).await;
    let body = vec![b' '; 2 << 20];
    let response = http_client()
        .post(format!("http://{}/v2/models/p/infer", server.http))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("--max-message-mib"), "{error}");
}

#[tokio::test]
async fn tokens_guard_both_transports_and_liveness_stays_open() {
    let (server, admin) = server(&["--tokens"]).await;
    let admin = admin.unwrap();
    let mut client = server.oip();
    assert!(client.server_live(oip::ServerLiveRequest {}).await.unwrap().into_inner().live);
    let status = client.model_infer(fp32_request("p", "", true)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    client.model_infer(with_token(fp32_request("p", "", true), &admin)).await.unwrap();

    let http = http_client();
    let base = format!("http://{}", server.http);
    assert_eq!(http.get(format!("{base}/v2/health/ready")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/v2/models/p")).send().await.unwrap().status(), 401);
    let wrong = http.get(format!("{base}/v2/models/p")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = http.get(format!("{base}/v2/models/p")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    // Role predict is enough for the whole protocol.
    let reader = create_token(&server.dirs.data.path().join("tokens"), "predict", "reader");
    let infer = alps_system_tests::eventually("the new token to load", || {
        let mut client = server.oip();
        let request = with_token(fp32_request("p", "", true), &reader);
        async move { client.model_infer(request).await.ok() }
    })
    .await;
    assert_eq!(infer.into_inner().model_version, "2");
    let ok = http.get(format!("{base}/v2/models/p/stats")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

/// The venv with tritonclient and perf_analyzer (`scripts/bootstrap-triton.sh`, run by
/// `make test`).
fn triton_venv() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-triton");
    assert!(venv.join("bin/perf_analyzer").exists(), "{} is missing: run scripts/bootstrap-triton.sh", venv.display());
    venv
}

fn run(program: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{} {args:?} failed ({}):\n{stdout}\n{stderr}", program.display(), output.status);
    stdout.into_owned()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// alps.v1 Predict of `samples` with [`SEED`] and [`K`], as the JSON tritonclient_check.py
/// prints per input: every output with its shape and flat data.
async fn predict_as_outputs(server: &Server, samples: Vec<Input>) -> Value {
    let n = samples.len();
    let samples = samples.into_iter().enumerate().map(|(i, input)| Sample { id: i.to_string(), input: Some(input) });
    let request = PredictRequest {
        project_id: "p".into(),
        samples: samples.collect(),
        mc_iterations: K,
        seed: Some(SEED),
        return_mc_samples: true,
        ..Default::default()
    };
    let response = InferenceServiceClient::new(server.channel.clone()).predict(request).await.unwrap().into_inner();
    let (mut probabilities, mut class, mut score, mut mc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for result in response.results {
        let Some(Outcome::Prediction(p)) = result.outcome else { panic!("{result:?}") };
        probabilities.extend(p.mean_probabilities);
        class.push(p.class_name);
        score.push(p.score);
        mc.extend(p.mc_samples.unwrap().data);
    }
    json!({
        "probabilities": { "shape": [n, 2], "data": probabilities },
        "class": { "shape": [n], "data": class },
        "score": { "shape": [n], "data": score },
        "mc_samples": { "shape": [n, 2, K], "data": mc },
    })
}

/// JSON numbers printed from float32 values, read back as f32 (exact for f32-representable
/// values) so the comparison is bit for bit.
fn as_f32(value: &Value) -> Value {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => json!(n.as_f64().unwrap() as f32),
        Value::Array(items) => Value::Array(items.iter().map(as_f32).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), as_f32(v))).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn tritonclient_grpc_and_http_see_what_predict_answers() {
    let venv = triton_venv();
    let (server, _) = server(&[]).await;
    let grpc = server.grpc.clone();
    let (seed, k) = (SEED.to_string(), K.to_string());
    let report = run(
        &venv.join("bin/python"),
        &[
            "tests/oip/tritonclient_check.py",
            "--grpc",
            &grpc,
            "--http",
            &server.http,
            "--model",
            "p",
            "--seed",
            &seed,
            "--mc-iterations",
            &k,
            "--side",
            "2",
        ],
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    let images: Vec<Input> =
        report["images"].as_array().unwrap().iter().map(|h| Input::Image(hex_bytes(h.as_str().unwrap()))).collect();
    let tensors: Vec<Input> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let data = t.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            Input::Tensor(Tensor { shape: vec![1, 2, 2], data })
        })
        .collect();
    let expected_images = as_f32(&predict_as_outputs(&server, images).await);
    let expected_tensors = as_f32(&predict_as_outputs(&server, tensors).await);
    for client in ["grpc", "http"] {
        let seen = &report[client];
        assert_eq!(as_f32(&seen["image"]), expected_images, "{client} image");
        assert_eq!(as_f32(&seen["tensor"]), expected_tensors, "{client} tensor");
        assert_eq!(as_f32(&seen["score_only"]), json!({ "score": expected_tensors["score"] }), "{client}");
        assert_eq!(seen["metadata"]["inputs"][0]["shape"], json!([-1, 1]), "{client}");
        assert!(seen["config"]["max_batch_size"].as_u64().unwrap() > 0, "{client}");
        let errors = &seen["errors"];
        for (case, fragment) in [
            ("unknown_model", "not found"),
            ("unknown_version", "no model version"),
            ("wrong_shape", "takes FP32 [N, 1, 2, 2]"),
        ] {
            assert!(errors[case].as_str().unwrap().contains(fragment), "{client} {case}: {}", errors[case]);
        }
        let codes = if client == "grpc" { ["NOT_FOUND", "INVALID_ARGUMENT"] } else { ["404", "400"] };
        assert!(errors["unknown_model"].as_str().unwrap().contains(codes[0]), "{client}: {}", errors["unknown_model"]);
        assert!(errors["wrong_shape"].as_str().unwrap().contains(codes[1]), "{client}: {}", errors["wrong_shape"]);
    }
}

#[tokio::test]
async fn perf_analyzer_measures_a_project_over_grpc_and_http() {
    let venv = triton_venv();
    let (server, _) = server(&[]).await;
    let grpc = server.grpc.clone();
    let data = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        data.path(),
        json!({ "data": [{ "tensor": { "content": [0.3, 0.3, 0.7, 0.7], "shape": [1, 2, 2] } }] }).to_string(),
    )
    .unwrap();
    for (protocol, url) in [("grpc", grpc.as_str()), ("http", server.http.as_str())] {
        let report = run(
            &venv.join("bin/perf_analyzer"),
            &[
                "-m",
                "p",
                "-u",
                url,
                "-i",
                protocol,
                "--concurrency-range",
                "2",
                "--measurement-mode",
                "count_windows",
                "--measurement-request-count",
                "40",
                // The test checks that perf_analyzer works with ALPS, not how fast: any three
                // windows count as stable (it exits non-zero on unstable ones, which a busy
                // machine would otherwise cause).
                "--stability-percentage",
                "999",
                "--input-data",
                alps_system_tests::path_str(data.path()),
            ],
        );
        // perf_analyzer printed the server's own statistics next to its client-side figures.
        assert!(report.contains("Successful request count"), "{protocol}:\n{report}");
        assert!(report.contains("Concurrency: 2, throughput:"), "{protocol}:\n{report}");
    }
}

#[tokio::test]
async fn a_version_trained_for_other_classes_is_refused_not_served() {
    let (server, _) = server(&[]).await;
    let project = Project {
        id: "p".into(),
        classes: vec!["low".into(), "middle".into(), "high".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
        ..Default::default()
    };
    let mut projects = ProjectServiceClient::new(server.channel.clone());
    projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
    let status = server.oip().model_infer(fp32_request("p", "2", true)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("other classes"), "{}", status.message());
    // The project itself serves its new (untrained) model, as version 0, and metadata and
    // readiness agree: only what can serve is listed or ready.
    let response = server.oip().model_infer(fp32_request("p", "", true)).await.unwrap().into_inner();
    assert_eq!(response.model_version, "0");
    assert_eq!(output(&response, "probabilities").0, [3, 3]);
    let metadata = server
        .oip()
        .model_metadata(oip::ModelMetadataRequest { name: "p".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.versions, ["0"]);
    let ready = oip::ModelReadyRequest { name: "p".into(), version: "2".into() };
    assert!(!server.oip().model_ready(ready).await.unwrap().into_inner().ready);
    let http = http_client();
    let response = http.get(format!("http://{}/v2/models/p/versions/2/ready", server.http)).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["ready"], false);
}

#[tokio::test]
async fn a_version_trained_for_other_preprocessing_is_refused_not_served() {
    let (server, _) = server(&[]).await;
    let update = alps_proto::v1::UpdateProjectRequest {
        project_id: "p".into(),
        preprocessing: Some(Preprocessing { width: 3, height: 3, channels: 1, ..Default::default() }),
        ..Default::default()
    };
    ProjectServiceClient::new(server.channel.clone()).update_project(update).await.unwrap();
    let status = server.oip().model_infer(fp32_request("p", "1", true)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("preprocessing"), "{}", status.message());
}
