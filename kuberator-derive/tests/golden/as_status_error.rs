const _: fn() = || {
    fn user_error<T: ::kuberator::__private::UserError>() {}
    user_error::<WebsiteError>();
};
#[automatically_derived]
impl ::kuberator::AsStatusError<StatusError> for WebsiteError
where
    for<'__kuberator> WebsiteError: ::kuberator::__private::UserError,
{
    fn as_status_error(&self) -> StatusError {
        <StatusError as ::kuberator::FromStatusError>::from_status_error(
            &::kuberator::ClassifyError::reason(self),
            ::std::string::ToString::to_string(self),
        )
    }
}
#[automatically_derived]
impl ::kuberator::ClassifyError for WebsiteError
where
    for<'__kuberator> WebsiteError: ::kuberator::__private::UserError,
{
    fn retry_policy(&self) -> ::kuberator::RetryPolicy {
        match self {
            Self::EmptyImage { .. } => ::kuberator::RetryPolicy::Terminal,
            Self::Registry { .. } => ::kuberator::RetryPolicy::Backoff,
            Self::Dependency { .. } => {
                ::kuberator::RetryPolicy::After(
                    ::core::time::Duration::from_millis(90000),
                )
            }
        }
    }
    fn reason(&self) -> ::std::borrow::Cow<'static, str> {
        ::std::borrow::Cow::Borrowed(
            match self {
                Self::EmptyImage { .. } => "EmptyImage",
                Self::Registry { .. } => "Registry",
                Self::Dependency { .. } => "Waiting",
            },
        )
    }
}
#[automatically_derived]
impl ::core::convert::From<WebsiteError> for ::kuberator::Error
where
    for<'__kuberator> WebsiteError: ::kuberator::__private::UserError,
{
    fn from(error: WebsiteError) -> Self {
        ::kuberator::Error::handler(error)
    }
}
