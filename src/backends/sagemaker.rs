//! `aws_sagemaker.invoke_endpoint` on SageMaker Runtime: `InvokeEndpoint` with a `text/csv` body
//! of one record per row; the response has one record per row.

use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_sdk_sagemakerruntime::Client;

use super::{classify, BoxFuture, EndpointBackend};
use crate::error::InferenceError;

/// InvokeEndpoint's payload limit.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

pub struct SageMakerBackend {
    client: Client,
}

impl SageMakerBackend {
    pub fn new(client: Client) -> SageMakerBackend {
        SageMakerBackend { client }
    }
}

impl EndpointBackend for SageMakerBackend {
    fn invoke<'a>(
        &'a self,
        endpoint: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<(String, Option<String>), InferenceError>> {
        Box::pin(async move {
            let output = self
                .client
                .invoke_endpoint()
                .endpoint_name(endpoint)
                .content_type("text/csv")
                .accept("text/csv")
                .body(Blob::new(body.into_bytes()))
                .send()
                .await
                .map_err(classify)?;
            let request_id = aws_sdk_sagemakerruntime::operation::RequestId::request_id(&output)
                .map(str::to_owned);
            let bytes = output
                .body()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default();
            let text = String::from_utf8(bytes).map_err(|_| InferenceError::Malformed {
                message: "the endpoint's response is not UTF-8 text".into(),
                request_id: request_id.clone(),
            })?;
            Ok((text, request_id))
        })
    }
}
