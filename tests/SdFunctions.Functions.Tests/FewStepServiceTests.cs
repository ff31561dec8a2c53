using System.Text.Json;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>The service's few-step path on Azurite with the real pipeline: LCM models, the lcm scheduler, decoder choice.</summary>
[Collection(AzuriteCollection.Name)]
public class FewStepServiceTests
{
    [Fact]
    public async Task AnLcmModelRunsItsDefaultsAndTheOutputSaysWhatRan()
    {
        await using var app = await TestApp.StartAsync(AzuriteFixture.TinyLcm);
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "a drawing of a green pokemon", "seed": 3}""");
        string id = IdOf(submitted);
        await app.RunNextMessageAsync();

        var done = await app.JobAsync(id);
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

        var health = await app.HealthAsync();
        Assert.True(health.GetProperty("guidanceDistilled").GetBoolean());
        Assert.Equal("lcm", health.GetProperty("defaults").GetProperty("scheduler").GetString());
    }

    [Fact]
    public async Task ANegativePromptForAnLcmModelIsTheSame400BeforeAndAfterThisInstanceLoadsTheModel()
    {
        await using var app = await TestApp.StartAsync(AzuriteFixture.TinyLcm);
        const string json = """{"prompt": "a cat", "negativePrompt": "blurry", "steps": 60}""";
        // Not loaded yet on this instance: its profile (read without a session) refuses it already, naming both fields.
        Assert.False(app.Pipelines.IsLoaded);
        var (early, _) = await app.SubmitAsync(json);
        var before = AssertProblem(early, 400, ProblemTypes.Validation);
        Assert.Contains("negative prompt", before.GetProperty("errors").GetProperty("negativePrompt")[0].GetString());
        Assert.Contains("at most 50 steps", before.GetProperty("errors").GetProperty("steps")[0].GetString()); // its original_inference_steps
        Assert.False(app.Pipelines.IsLoaded);
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);

        await app.Pipelines.GetAsync();
        var (late, _) = await app.SubmitAsync(json);
        var after = AssertProblem(late, 400, ProblemTypes.Validation);
        Assert.Equal(before.GetProperty("errors").GetRawText(), after.GetProperty("errors").GetRawText());
        Assert.Equal(before.GetProperty("detail").GetString(), after.GetProperty("detail").GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task AJobTheModelCannotRunFailsWithTheSameProblemInTheWorker()
    {
        // A message queued before its model changed (or by an instance that could not read the profile): the worker applies the
        // same rules, fails the job at once (no retry) and shows the rule's own words.
        await using var app = await TestApp.StartAsync(AzuriteFixture.TinyLcm);
        var job = new JobRecord
        {
            Id = JobIds.New(), CreatedAt = DateTimeOffset.UtcNow,
            Input = new GenerationInput { Prompt = "a cat", NegativePrompt = "blurry", Width = 256, Height = 256, Seed = 1 },
        };
        Assert.True(await app.Store.TryCreateAsync(job, default));
        await app.Queue.Process(Delivery.Of(System.Text.Json.JsonSerializer.Serialize(new JobMessage(job.Id, null), JobJson.Options), 1), default);
        var failed = await app.JobAsync(job.Id);
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        Assert.Equal(1, failed.GetProperty("attempt").GetInt32());
        var error = failed.GetProperty("error");
        Assert.Equal(ProblemTypes.Validation, error.GetProperty("type").GetString());
        Assert.Contains("negative prompt", error.GetProperty("errors").GetProperty("negativePrompt")[0].GetString());
        Assert.DoesNotContain("(Parameter", error.GetProperty("detail").GetString());
    }

    [Fact]
    public async Task LcmOnAnSdModelAndDecoderChoicesAreValidated()
    {
        await using var app = await TestApp.StartAsync();
        var (tooMany, _) = await app.SubmitAsync("""{"prompt": "x", "scheduler": "lcm", "steps": 60}""");
        Assert.True(AssertProblem(tooMany, 400, ProblemTypes.Validation).GetProperty("errors").TryGetProperty("steps", out _));
        var (badDecoder, _) = await app.SubmitAsync("""{"prompt": "x", "decoder": "huge"}""");
        Assert.True(AssertProblem(badDecoder, 400, ProblemTypes.Validation).GetProperty("errors").TryGetProperty("decoder", out _));

        // lcm on a plain UNet: 4 steps, guidance off (batch 1, no unconditional pass).
        var output = (await app.RunJobAsync("""{"prompt": "a lighthouse", "scheduler": "lcm", "seed": 1}""")).GetProperty("output");
        Assert.Equal((4, 1.0, 1, "none"), (output.GetProperty("steps").GetInt32(), output.GetProperty("guidanceScale").GetDouble(),
            output.GetProperty("uNetBatch").GetInt32(), output.GetProperty("conditioning").GetString()));

        // tiny-sd has no TAESD: once loaded, asking for it is a 400 naming the decoders it has.
        var (noTiny, _) = await app.SubmitAsync("""{"prompt": "x", "decoder": "tiny"}""");
        Assert.Contains("full", AssertProblem(noTiny, 400, ProblemTypes.Validation).GetProperty("errors").GetProperty("decoder")[0].GetString());
    }
}
