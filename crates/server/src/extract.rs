//! Request extractors whose rejections are JSON errors naming the field,
//! parameter or path at fault, like every other error of the API.
//!
//! A JSON body must say `Content-Type: application/json`, or it is refused
//! with 415 `unsupported_media_type`: the types a web page may send
//! cross-origin without asking first (`text/plain`, forms) never reach a
//! handler as JSON. Derrick's routes take [`AnyTypeJson`] instead, since
//! clients written for Derrick do not all say it.

use crate::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A JSON body, refused with `invalid_body` naming the offending field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json_type(req.headers())?;
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body whose fields are all optional: an empty body is the
/// default (as is `null`), so that `curl -X POST` with no `-d` works.
pub struct JsonOrDefault<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrDefault(T::default()));
        }
        require_json_type(&headers)?;
        if bytes.trim_ascii() == b"null" {
            return Ok(JsonOrDefault(T::default()));
        }
        parse_json(&bytes).map(JsonOrDefault)
    }
}

/// A JSON body whatever its `Content-Type` says: for Derrick's routes only.
pub struct AnyTypeJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AnyTypeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(AnyTypeJson)
    }
}

/// Refuses a body that does not say `Content-Type: application/json`
/// (parameters such as `charset` aside).
fn require_json_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE);
    let is_json = content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return Ok(());
    }
    let found = content_type.map_or("none".to_string(), |value| {
        format!(
            "`{}`",
            String::from_utf8_lossy(value.as_bytes()).escape_debug()
        )
    });
    Err(ApiError::new(
        "unsupported_media_type",
        format!(
            "the request body is JSON: send `Content-Type: application/json` (this request's \
             Content-Type: {found})"
        ),
    ))
}

/// The raw body, with an oversized body refused as `body_too_large`.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    "body_too_large",
                    format!(
                        "the request body is larger than the limit of {} bytes",
                        crate::BODY_LIMIT
                    ),
                )
            } else {
                ApiError::new("invalid_body", rejection.body_text())
            }
        })
}

/// Parses a JSON body, an object; the error names the path of the field at
/// fault.
///
/// A number written with a fraction of zero (`3.0`) is read as the integer
/// it is: JSON Schema counts it as one, so the OpenAPI document's integers
/// admit it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| ApiError::new("invalid_body", format!("request body: {err}")))?;
    integral_floats_as_integers(&mut value);
    let body: Body<T> = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if path == "." {
            format!("request body: {inner}")
        } else {
            format!("request body: field `{path}`: {inner}")
        };
        ApiError::new("invalid_body", message)
    })?;
    Ok(body.0)
}

/// A body, read from a JSON object only.
struct Body<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Body<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        berth_core::object::from_object(deserializer).map(Body)
    }
}

/// Rewrites every number with a zero fraction that fits an integer as that
/// integer.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::{Number, Value};
    match value {
        Value::Number(number) => {
            let Some(float) = number.as_f64().filter(|_| number.is_f64()) else {
                return;
            };
            if float.fract() != 0.0 {
                return;
            }
            // Casts are exact here: the float is integral and in range.
            let integer = if (0.0..u64::MAX as f64).contains(&float) {
                Some(Number::from(float as u64))
            } else if (i64::MIN as f64..0.0).contains(&float) {
                Some(Number::from(float as i64))
            } else {
                None
            };
            if let Some(integer) = integer {
                *number = integer;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// Query parameters, refused with `invalid_query` naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| ApiQuery(query.0))
            .map_err(|rejection| ApiError::new("invalid_query", rejection.body_text()))
    }
}
