//! Inference backends. Each one only translates a batch into one service call; batching,
//! de-duplication, concurrency limits and error mapping live in [`crate::enrich`].
//!
//! - [`comprehend`]: Amazon Comprehend `BatchDetectSentiment` through aws-sdk-comprehend.
//! - [`sagemaker`]: SageMaker Runtime `InvokeEndpoint` (text/csv) through
//!   aws-sdk-sagemakerruntime.
//!
//! Both are configured from the standard AWS chain (environment, shared config and credential
//! files, web identity / IRSA, IMDS), including service endpoint overrides such as
//! `AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME` and `AWS_ENDPOINT_URL_COMPREHEND`, with the SDK's own
//! retry modes and timeouts.

pub mod bedrock;
pub mod comprehend;
pub mod local;
pub mod onnx;
pub mod sagemaker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_sdk_sagemakerruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sagemakerruntime::operation::RequestId;

use crate::error::InferenceError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Comprehend's sentiment labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SentimentLabel {
    Positive,
    Negative,
    Neutral,
    Mixed,
}

impl SentimentLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            SentimentLabel::Positive => "POSITIVE",
            SentimentLabel::Negative => "NEGATIVE",
            SentimentLabel::Neutral => "NEUTRAL",
            SentimentLabel::Mixed => "MIXED",
        }
    }
}

/// One document's sentiment: the label and the score of that label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sentiment {
    pub label: SentimentLabel,
    pub confidence: f32,
}

/// Detects the sentiment of a batch of documents.
pub trait SentimentBackend: Send + Sync {
    /// Most documents per call.
    fn max_batch(&self) -> usize;
    /// One result per text, in input order.
    fn detect<'a>(
        &'a self,
        language: &'a str,
        texts: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Sentiment>, InferenceError>>;
}

/// Foundation models (Bedrock's InvokeModel): one input body per call.
pub trait ModelBackend: Send + Sync {
    /// The response body (UTF-8) and the service's request id.
    fn invoke<'a>(
        &'a self,
        model_id: &'a str,
        content_type: &'a str,
        accept: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<(String, Option<String>), InferenceError>>;
}

/// A model endpoint taking and returning `text/csv`.
pub trait EndpointBackend: Send + Sync {
    /// The response body and the service's request id.
    fn invoke<'a>(
        &'a self,
        endpoint: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<(String, Option<String>), InferenceError>>;
}

/// The backends the executor dispatches to.
#[derive(Clone)]
pub struct Backends {
    pub sentiment: Arc<dyn SentimentBackend>,
    pub endpoints: Arc<dyn EndpointBackend>,
    pub models: Arc<dyn ModelBackend>,
}

/// Error codes the SDK's retry classifier also treats as throttling.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

const ACCESS_CODES: &[&str] = &[
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "MissingAuthenticationTokenException",
    "IncompleteSignature",
];

/// Turns an SDK failure (after the SDK's own retries) into an [`InferenceError`]. Messages come
/// from the service and never carry credentials.
pub(crate) fn classify<E, R>(error: SdkError<E, R>) -> InferenceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    SdkError<E, R>: RequestId,
    R: std::fmt::Debug,
{
    let request_id = error.request_id().map(str::to_owned);
    let context = aws_smithy_error_context(&error);
    match error {
        SdkError::TimeoutError(_) => InferenceError::Timeout,
        SdkError::DispatchFailure(failure) => InferenceError::Transport {
            message: if failure.is_timeout() {
                "timed out".to_owned()
            } else {
                context
            },
        },
        SdkError::ResponseError(_) => InferenceError::Malformed {
            message: "the service's response could not be read".into(),
            request_id,
        },
        SdkError::ServiceError(context) => {
            let service = context.err();
            let code = service.code().unwrap_or("Unknown").to_owned();
            let message = service.message().unwrap_or_default().to_owned();
            if THROTTLING_CODES.contains(&code.as_str()) {
                InferenceError::Throttled { request_id }
            } else if ACCESS_CODES.contains(&code.as_str()) {
                InferenceError::AccessDenied {
                    code,
                    message,
                    request_id,
                }
            } else if code == "UnsupportedLanguageException" {
                InferenceError::UnsupportedLanguage {
                    message,
                    request_id,
                }
            } else if code == "TextSizeLimitExceededException" {
                InferenceError::DocumentTooLarge { limit: 5000 }
            } else {
                InferenceError::Service {
                    code,
                    message,
                    request_id,
                }
            }
        }
        _ => InferenceError::Transport { message: context },
    }
}

/// The error and its sources on one line (the SDK's Display shows only the outermost).
fn aws_smithy_error_context(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Puts the embedded backends the configuration asks for in front of `remote`: the local sentiment
/// model instead of Comprehend, and ONNX models for the endpoint names configured (loaded and
/// checked now, so a bad model stops start-up), every other endpoint name still going to `remote`.
pub fn with_local(
    remote: Backends,
    config: &crate::config::InferenceConfig,
) -> Result<Backends, crate::error::ConfigError> {
    use crate::config::SentimentBackendKind;
    let sentiment: Arc<dyn SentimentBackend> = match config.comprehend_backend {
        SentimentBackendKind::Aws => remote.sentiment,
        SentimentBackendKind::Local => Arc::new(local::VaderBackend),
    };
    if config.endpoints.is_empty() {
        return Ok(Backends {
            sentiment,
            endpoints: remote.endpoints,
            models: remote.models,
        });
    }
    let mut models = std::collections::HashMap::new();
    for (name, endpoint) in &config.endpoints {
        let model = onnx::OnnxModel::load(&endpoint.model, endpoint.output.as_deref()).map_err(
            |reason| crate::error::ConfigError::Invalid {
                key: "endpoints",
                reason: format!("[endpoints.{name}]: {reason}"),
            },
        )?;
        tracing::info!(
            endpoint = %name,
            model = %endpoint.model.display(),
            features = model.features(),
            "local ONNX model loaded"
        );
        models.insert(name.clone(), Arc::new(model));
    }
    Ok(Backends {
        sentiment,
        endpoints: Arc::new(onnx::LocalEndpoints::new(models, remote.endpoints)),
        models: remote.models,
    })
}

/// Builds the AWS backends from the standard AWS configuration chain, with pgenrich's retry,
/// timeout, region and endpoint settings on top. `credentials` replaces the chain's credential
/// providers (tests pin static credentials so nothing probes IMDS).
pub async fn aws(
    config: &crate::config::InferenceConfig,
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
) -> Backends {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    let retry = match config.retry_mode {
        crate::config::RetryMode::Standard => RetryConfig::standard(),
        crate::config::RetryMode::Adaptive => RetryConfig::adaptive(),
    }
    .with_max_attempts(config.max_attempts);
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(config.timeout)
                .build(),
        );
    if let Some(region) = &config.aws_region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    let sdk = loader.load().await;
    let mut sagemaker = aws_sdk_sagemakerruntime::config::Builder::from(&sdk);
    if let Some(url) = &config.sagemaker_endpoint_url {
        sagemaker = sagemaker.endpoint_url(url);
    }
    let mut comprehend = aws_sdk_comprehend::config::Builder::from(&sdk);
    if let Some(url) = &config.comprehend_endpoint_url {
        comprehend = comprehend.endpoint_url(url);
    }
    let mut bedrock = aws_sdk_bedrockruntime::config::Builder::from(&sdk);
    if let Some(url) = &config.bedrock_endpoint_url {
        bedrock = bedrock.endpoint_url(url);
    }
    sagemaker = sagemaker.interceptor(CountRetries("sagemaker"));
    comprehend = comprehend.interceptor(CountRetries("comprehend"));
    bedrock = bedrock.interceptor(CountRetries("bedrock"));
    Backends {
        sentiment: Arc::new(comprehend::ComprehendBackend::new(
            aws_sdk_comprehend::Client::from_conf(comprehend.build()),
        )),
        endpoints: Arc::new(sagemaker::SageMakerBackend::new(
            aws_sdk_sagemakerruntime::Client::from_conf(sagemaker.build()),
        )),
        models: Arc::new(bedrock::BedrockBackend::new(
            aws_sdk_bedrockruntime::Client::from_conf(bedrock.build()),
        )),
    }
}

/// Counts the attempts after the first that the SDK's retry mode makes (metrics), per service.
#[derive(Debug)]
struct CountRetries(&'static str);

impl aws_smithy_runtime_api::client::interceptors::Intercept for CountRetries {
    fn name(&self) -> &'static str {
        "pgenrich::CountRetries"
    }

    fn read_before_attempt(
        &self,
        _: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_smithy_runtime_api::client::retries::RequestAttempts;
        if cfg
            .load::<RequestAttempts>()
            .is_some_and(|attempts| attempts.attempts() > 1)
        {
            crate::metrics::inference_retry(self.0);
        }
        Ok(())
    }
}
