using Microsoft.Azure.Functions.Worker;
using SdFunctions.Jobs;
using SdFunctions.Jobs.Webhooks;

namespace SdFunctions.Functions;

/// <summary>Sends webhook events from their own queue: a slow or dead receiver never holds up a generation.</summary>
public sealed class WebhookFunctions(WebhookSender sender)
{
    [Function("DeliverWebhook")]
    public Task Deliver([QueueTrigger(WebhookQueue.Name, Connection = JobsServiceCollectionExtensions.StorageSetting)] string message, CancellationToken ct) =>
        sender.DeliverAsync(message, ct);
}
