using System.Net;
using System.Text;
using System.Text.Json;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>What the end-to-end cases do over HTTP against the app under the host: submit, poll, wait for a state.</summary>
public abstract class HostClient(FunctionsHostFixture host)
{
    protected string Api(string path, bool key = true) => $"{host.BaseUrl}/api/{path}{(key ? (path.Contains('?') ? "&" : "?") + "code=" + FunctionsHostFixture.FunctionKey : "")}";

    protected async Task<HttpResponseMessage> SubmitAsync(string json, string? idempotencyKey = null)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, Api("generations")) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        if (idempotencyKey is not null) request.Headers.Add("Idempotency-Key", idempotencyKey);
        return await host.Http.SendAsync(request);
    }

    protected static async Task<JsonElement> JsonAsync(HttpResponseMessage response) =>
        JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;

    protected async Task<string> SubmitIdAsync(string json)
    {
        var response = await SubmitAsync(json);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        return (await JsonAsync(response)).GetProperty("id").GetString()!;
    }

    protected async Task<JsonElement> WaitAsync(string id, Func<JsonElement, bool> until, int seconds = 120)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(seconds))
        {
            var job = await JsonAsync(await host.Http.GetAsync(Api($"generations/{id}")));
            if (until(job)) return job;
            await Task.Delay(200);
        }
        throw new TimeoutException($"job {id} did not get there in {seconds} s; host log:\n{host.RecentLog}");
    }

    protected static string Status(JsonElement job) => job.GetProperty("status").GetString()!;
    protected static bool Finished(JsonElement job) => Status(job) is "succeeded" or "failed" or "canceled";
}
