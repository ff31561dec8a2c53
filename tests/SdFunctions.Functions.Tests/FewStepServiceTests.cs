using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;

namespace SdFunctions.Functions.Tests;

/// <summary>The service's few-step path on Azurite with the real pipeline: LCM models, the lcm scheduler, decoder choice.</summary>
[Collection(AzuriteCollection.Name)]
public class FewStepServiceTests
{
    private static JsonElement Body(ContentResult r) => JsonDocument.Parse(r.Content!).RootElement;

    [Fact]
    public async Task AnLcmModelRunsItsDefaultsAndTheOutputSaysWhatRan()
    {
        await using var app = await TestApp.StartAsync(AzuriteFixture.TinyLcm);
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "a drawing of a green pokemon", "seed": 3}""");
        string id = Body(submitted).GetProperty("id").GetString()!;
        await app.RunNextMessageAsync();

        var done = Body(await app.GetAsync(id));
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        var output = done.GetProperty("output");
        Assert.Equal("lcm", output.GetProperty("scheduler").GetString());
        Assert.Equal(4, output.GetProperty("steps").GetInt32());
        Assert.Equal(8.5, output.GetProperty("guidanceScale").GetDouble());
        Assert.Equal("full", output.GetProperty("decoder").GetString());
        Assert.Equal(1, output.GetProperty("uNetBatch").GetInt32());
        Assert.Equal("guidance-embedding", output.GetProperty("conditioning").GetString());
        Assert.Equal(4, output.GetProperty("uNetCalls").GetInt32());
        Assert.Equal(4, done.GetProperty("progress").GetProperty("total").GetInt32());

        var health = Body((ContentResult)app.Health.Run(TestApp.Request("GET", "/api/health")));
        Assert.True(health.GetProperty("guidanceDistilled").GetBoolean());
        Assert.Equal("lcm", health.GetProperty("defaults").GetProperty("scheduler").GetString());
    }

    [Fact]
    public async Task ANegativePromptForAnLcmModelIsA400OnceLoadedAndAFailedJobBefore()
    {
        await using var app = await TestApp.StartAsync(AzuriteFixture.TinyLcm);
        // Not loaded yet on this instance: accepted, and the worker refuses it with the same validation problem (no retry).
        var (early, _) = await app.SubmitAsync("""{"prompt": "a cat", "negativePrompt": "blurry"}""");
        Assert.Equal(202, early.StatusCode);
        string id = Body(early).GetProperty("id").GetString()!;
        await app.RunNextMessageAsync();
        var failed = Body(await app.GetAsync(id));
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        Assert.Equal(1, failed.GetProperty("attempt").GetInt32());
        var error = failed.GetProperty("error");
        Assert.Equal(ProblemTypes.Validation, error.GetProperty("type").GetString());
        Assert.Equal(400, error.GetProperty("status").GetInt32());
        Assert.True(error.GetProperty("errors").TryGetProperty("negativePrompt", out _));

        // Loaded now: the same request is refused at submit, naming the field; nothing is queued.
        Assert.True(app.Pipelines.IsLoaded);
        var (refused, _) = await app.SubmitAsync("""{"prompt": "a cat", "negativePrompt": "blurry"}""");
        var problem = FlowTests.AssertProblem(refused, 400, ProblemTypes.Validation);
        Assert.Contains("negative prompt", problem.GetProperty("errors").GetProperty("negativePrompt")[0].GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task LcmOnAnSdModelAndDecoderChoicesAreValidated()
    {
        await using var app = await TestApp.StartAsync();
        var (tooMany, _) = await app.SubmitAsync("""{"prompt": "x", "scheduler": "lcm", "steps": 60}""");
        Assert.True(FlowTests.AssertProblem(tooMany, 400, ProblemTypes.Validation).GetProperty("errors").TryGetProperty("steps", out _));
        var (badDecoder, _) = await app.SubmitAsync("""{"prompt": "x", "decoder": "huge"}""");
        Assert.True(FlowTests.AssertProblem(badDecoder, 400, ProblemTypes.Validation).GetProperty("errors").TryGetProperty("decoder", out _));

        // lcm on a plain UNet: 4 steps, guidance off (batch 1, no unconditional pass).
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "a lighthouse", "scheduler": "lcm", "seed": 1}""");
        string id = Body(submitted).GetProperty("id").GetString()!;
        await app.RunNextMessageAsync();
        var output = Body(await app.GetAsync(id)).GetProperty("output");
        Assert.Equal((4, 1.0, 1, "none"), (output.GetProperty("steps").GetInt32(), output.GetProperty("guidanceScale").GetDouble(),
            output.GetProperty("uNetBatch").GetInt32(), output.GetProperty("conditioning").GetString()));

        // tiny-sd has no TAESD: once loaded, asking for it is a 400 naming the decoders it has.
        var (noTiny, _) = await app.SubmitAsync("""{"prompt": "x", "decoder": "tiny"}""");
        Assert.Contains("full", FlowTests.AssertProblem(noTiny, 400, ProblemTypes.Validation).GetProperty("errors").GetProperty("decoder")[0].GetString());
    }
}
