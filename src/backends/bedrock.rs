//! `aws_bedrock.invoke_model` and `aws_bedrock.invoke_model_get_embeddings` on Bedrock Runtime:
//! `InvokeModel`, one call per input (the API has no batches), the body passed through as given.

use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::Client;

use super::{classify, BoxFuture, ModelBackend};
use crate::error::InferenceError;

pub struct BedrockBackend {
    client: Client,
}

impl BedrockBackend {
    pub fn new(client: Client) -> BedrockBackend {
        BedrockBackend { client }
    }
}

impl ModelBackend for BedrockBackend {
    fn invoke<'a>(
        &'a self,
        model_id: &'a str,
        content_type: &'a str,
        accept: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<(String, Option<String>), InferenceError>> {
        Box::pin(async move {
            let output = self
                .client
                .invoke_model()
                .model_id(model_id)
                .content_type(content_type)
                .accept(accept)
                .body(Blob::new(body.into_bytes()))
                .send()
                .await
                .map_err(classify)?;
            let request_id = aws_sdk_bedrockruntime::operation::RequestId::request_id(&output)
                .map(str::to_owned);
            let text = String::from_utf8(output.body.into_inner()).map_err(|_| {
                InferenceError::Malformed {
                    message: "the model's response is not UTF-8 text".into(),
                    request_id: request_id.clone(),
                }
            })?;
            Ok((text, request_id))
        })
    }
}
