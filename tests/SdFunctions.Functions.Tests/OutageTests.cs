using SdFunctions.Jobs;

namespace SdFunctions.Functions.Tests;

/// <summary>When storage cannot be reached, clients get a 503 problem, not a bare error page.</summary>
public class OutageTests
{
    // Nothing listens on port 1; the SAS is a dummy (the connection is refused before it matters).
    private const string Unreachable =
        "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;SharedAccessSignature=sv=2021-08-06&sig=dummy";

    [Fact]
    public async Task AStorageOutageIsA503Problem()
    {
        var app = new TestApp(configure: s => s["AzureWebJobsStorage"] = Unreachable);
        var result = await app.GetAsync(Guid.NewGuid().ToString("N"));
        FlowTests.AssertProblem(result, 503, ProblemTypes.ServiceUnavailable);
        await app.Services.DisposeAsync();
    }
}
