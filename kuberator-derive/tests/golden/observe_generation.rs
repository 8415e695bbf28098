#[automatically_derived]
impl ::kuberator::ObserveGeneration for WebsiteStatus {
    fn set_observed_generation(&mut self, generation: i64) {
        self.observed_generation = ::core::option::Option::Some(generation);
    }
    fn observed_generation(&self) -> ::core::option::Option<i64> {
        self.observed_generation
    }
}
#[automatically_derived]
impl ::kuberator::RecordError for WebsiteStatus
where
    WebsiteStatus: ::kuberator::__private::DefaultStatus,
{
    fn record_error(
        &mut self,
        error: ::core::option::Option<&::kuberator::Error>,
    ) -> bool {
        match error {
            ::core::option::Option::Some(error) => {
                self.error = ::core::option::Option::Some(
                    <WebsiteStatusError as ::kuberator::FromStatusError>::from_status_error(
                        &::kuberator::Error::reason(error),
                        ::std::string::ToString::to_string(error),
                    ),
                );
                true
            }
            ::core::option::Option::None => {
                ::core::option::Option::take(&mut self.error).is_some()
            }
        }
    }
}
#[automatically_derived]
impl<
    __E: ::kuberator::AsStatusError<WebsiteStatusError>,
> ::kuberator::WithStatusError<__E, WebsiteStatusError> for WebsiteStatus {
    fn set_status_error(&mut self, error: ::core::option::Option<WebsiteStatusError>) {
        self.error = error;
    }
}
