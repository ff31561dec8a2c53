using Azure.Storage.Queues.Models;

namespace SdFunctions.Functions.Tests;

/// <summary>A queue message as the trigger hands it to the function, for a delivery the test makes itself (a given dequeue count).</summary>
internal static class Delivery
{
    public static QueueMessage Of(string text, long dequeueCount) =>
        QueuesModelFactory.QueueMessage(Guid.NewGuid().ToString("N"), "pop-receipt", text, dequeueCount);
}
