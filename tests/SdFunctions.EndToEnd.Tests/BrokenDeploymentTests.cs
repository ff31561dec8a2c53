using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>A deployment whose bundle lacks a file: the host's retries run out, the poison function fails the job, and the client sees nothing internal.</summary>
public sealed class BrokenBundleHostFixture : FunctionsHostFixture
{
    private readonly string _bundle = CopyWithout(Path.Combine(RepoRoot(), "..", "shared", "fixtures", "tiny-sd"), Path.Combine("vae_decoder", "model.onnx"));

    protected override string ModelDirectory => _bundle;

    // The app is up once its health answers, ok or (the model cannot be read) unavailable.
    protected override bool IsReady(HttpResponseMessage health) => health.StatusCode is HttpStatusCode.OK or HttpStatusCode.ServiceUnavailable;

    private static string CopyWithout(string source, string missing)
    {
        string target = Directory.CreateTempSubdirectory("sdf-e2e-broken-").FullName;
        foreach (string file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(source, file);
            if (relative == missing) continue;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(target, relative))!);
            File.Copy(file, Path.Combine(target, relative));
        }
        return target;
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        Directory.Delete(_bundle, recursive: true);
    }
}

[Collection(HostCollection.Name), Trait("Category", "EndToEnd")]
public class BrokenDeploymentTests(BrokenBundleHostFixture host, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<BrokenBundleHostFixture>
{
    [Fact]
    public async Task AJobWhosePipelineCannotLoadFailsAfterTheHostsRetriesAndLeaksNothing()
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var submitted = await host.Http.PostAsync($"{host.BaseUrl}/api/generations?code={FunctionsHostFixture.FunctionKey}",
            new StringContent("""{"prompt": "x", "steps": 1}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.Accepted, submitted.StatusCode);
        string id = (await submitted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
        JsonElement job = default;
        while (watch.Elapsed < TimeSpan.FromSeconds(120))
        {
            job = await host.Http.GetFromJsonAsync<JsonElement>($"{host.BaseUrl}/api/generations/{id}?code={FunctionsHostFixture.FunctionKey}");
            if (job.GetProperty("status").GetString() == "failed") break;
            await Task.Delay(250);
        }
        Assert.Equal("failed", job.GetProperty("status").GetString());
        Assert.Equal(3, job.GetProperty("attempt").GetInt32()); // host.json maxDequeueCount
        string text = job.GetRawText();
        var error = job.GetProperty("error");
        Assert.Equal(("/problems/service-unavailable", "Model unavailable"), (error.GetProperty("type").GetString(), error.GetProperty("title").GetString()));
        Assert.Contains(error.GetProperty("correlationId").GetString()!, error.GetProperty("detail").GetString());
        foreach (string secret in new[] { "vae_decoder", "sdf-e2e-broken", "/tmp", "Exception" }) Assert.DoesNotContain(secret, text);
        output.WriteLine($"failed after 3 attempts in {watch.Elapsed.TotalSeconds:F1} s: {error.GetProperty("detail").GetString()}");

        // Health says so (a monitor sees the broken deployment), in words that show no path.
        using var health = await host.Http.GetAsync($"{host.BaseUrl}/api/health");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
        var model = (await health.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("checks").GetProperty("model");
        Assert.Equal("failed", model.GetProperty("status").GetString());
        Assert.StartsWith("The model bundle is incomplete or unreadable", model.GetProperty("reason").GetString());
        Assert.DoesNotContain("sdf-e2e-broken", await health.Content.ReadAsStringAsync());
    }
}
