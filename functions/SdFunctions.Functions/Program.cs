using Microsoft.Azure.Functions.Worker.Builder;
using Microsoft.Extensions.Hosting;
using SdFunctions.Functions;
using SdFunctions.Jobs;

var builder = FunctionsApplication.CreateBuilder(args);
builder.ConfigureFunctionsWebApplication();
builder.Services.AddGenerationJobs(builder.Configuration);
builder.Services.AddGenerationTelemetry(builder.Configuration);
builder.Build().Run();
