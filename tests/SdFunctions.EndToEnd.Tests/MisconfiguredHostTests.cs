using System.Net;
using System.Text;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>An app whose submit queue is not the trigger's: jobs would be accepted and never run, so it must not start.</summary>
public sealed class WrongQueueHostFixture : FunctionsHostFixture
{
    protected override void Configure(IDictionary<string, string?> settings) => settings["Jobs__QueueName"] = "generations-elsewhere";
    protected override bool AppStarts => false;
}

[Collection(HostCollection.Name), Trait("Category", "EndToEnd")]
public class MisconfiguredHostTests(WrongQueueHostFixture host) : IClassFixture<WrongQueueHostFixture>
{
    /// <summary>Defect: with Jobs__QueueName unlike the trigger's queue every job answered 202 and stayed queued, health ok.</summary>
    [Fact]
    public async Task AQueueNameTheTriggerDoesNotReadStopsTheAppWithOneLineAndAcceptsNoJob()
    {
        string line = Assert.Single(host.Log.Where(l => l.Contains("SdFunctions cannot start")).Distinct());
        Assert.Contains("Jobs__QueueName is 'generations-elsewhere' but the queue trigger listens on 'generations'", line);
        // The host may still be restarting its worker (connection refused) or answer for it: no answer is ever a 202 or a healthy 200.
        var answers = new List<string>();
        for (var watch = System.Diagnostics.Stopwatch.StartNew(); watch.Elapsed < TimeSpan.FromSeconds(20) && answers.Count < 2; await Task.Delay(500))
        {
            try
            {
                using var submitted = await host.Http.PostAsync($"{host.BaseUrl}/api/generations?code={FunctionsHostFixture.FunctionKey}",
                    new StringContent("""{"prompt": "x", "steps": 1}""", Encoding.UTF8, "application/json"));
                Assert.NotEqual(HttpStatusCode.Accepted, submitted.StatusCode);
                using var health = await host.Http.GetAsync($"{host.BaseUrl}/api/health");
                Assert.NotEqual(HttpStatusCode.OK, health.StatusCode);
                answers.Add($"{(int)submitted.StatusCode}/{(int)health.StatusCode}");
            }
            catch (HttpRequestException) { answers.Add("refused"); }
        }
        Assert.NotEmpty(answers);
    }
}
