//! One more queue for Parameter Store change events, as a second origin instance has:
//! a queue of its own that the template's rule also targets, so EventBridge hands
//! every event to each queue (an SQS message goes to one consumer only, so two
//! instances cannot share one queue).
//!
//! Boundary: extends [`Moto`] with the AWS SDK calls that make the queue and the
//! target; knows the template's rule by name, nothing of configwatch's code.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

use crate::moto::{Moto, RULE};

impl Moto {
    /// Creates the queue `name` and adds it as a target of the template's rule
    /// (made by [`Moto::create_resources`] first); returns the queue's URL. Events
    /// sent with [`Moto::ssm_change_event`] then reach this queue too. moto does not
    /// check queue policies, so none is set.
    pub async fn add_event_queue(&self, name: &str, visibility: Duration) -> String {
        let url = self
            .sqs()
            .await
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility.as_secs().max(1).to_string(),
            )
            .send()
            .await
            .expect("create queue")
            .queue_url
            .expect("queue url");
        let arn = self.queue_arn(&url).await;
        self.events()
            .await
            .put_targets()
            .rule(RULE)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id(name)
                    .arn(arn)
                    .build()
                    .expect("target"),
            )
            .send()
            .await
            .expect("put targets");
        url
    }
}
